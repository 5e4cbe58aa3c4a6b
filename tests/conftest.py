from __future__ import annotations

import os
import tempfile

# Tests never touch the internet. The hub cache lives in a throwaway folder, and the hub endpoint
# is a closed loopback port unless a test starts its own hub server (tests/hubserver.py) and
# points HF_ENDPOINT at it. Set before huggingface_hub is imported: it reads them at import.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="bbx-test-hf-")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["NO_COLOR"] = "1"
# the measured kernel choices (bbx.nn.kernels) go to a throwaway cache, probed once per session
os.environ["BBX_CACHE"] = tempfile.mkdtemp(prefix="bbx-test-cache-")


import pytest  # noqa: E402


def make_photos(folder, sizes, fmt="jpg", start_seed=0):
    from tests.util import photo

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        p = folder / f"img{i:03d}.{fmt}"
        photo(w, h, seed=start_seed + i).save(p)
        paths.append(p)
    return paths


@pytest.fixture()
def photos(tmp_path):
    """Seven photo-like JPEG/PNG files of camera-like and odd sizes."""
    folder = tmp_path / "imgs"
    sizes = [(320, 240), (240, 320), (257, 199), (400, 120), (96, 96), (500, 375), (150, 333)]
    paths = make_photos(folder, sizes[:4], "jpg") + make_photos(folder / "more", sizes[4:], "png", start_seed=10)
    return folder, sorted(paths, key=str)


@pytest.fixture()
def hub_server(tmp_path):
    """A hub look-alike on 127.0.0.1 (tests/hubserver.py) with its own empty cache: pass
    ``hub_server.env(...)`` to bbx subprocesses (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE, HF_TOKEN)."""
    from tests.hubserver import HubServer

    with HubServer(home=tmp_path / "hf-home") as server:
        yield server
