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
# no model trials (bbx.nn.kernels.ModelTrial) but in the tests of them: a model's first run times
# other kernels on its first batches, equal to rounding only, and many tests compare runs to the bit
os.environ["BBX_MODEL_TRIAL"] = "0"


# Under pytest-xdist (one worker per core), each worker's torch and the bbx processes it starts
# share the cores instead of each taking them all: oversubscribed OpenMP threads spin against each
# other. Before torch is imported; the processes inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

import pytest  # noqa: E402

#: the test files that take longest (``--durations``, 2-core machine: 15-60 s each), run first.
#: pytest-xdist hands whole files to the workers in collection order (``--dist loadfile``); a long
#: file handed out last ran on one worker while the other sat idle (40 s of the suite's end).
#: (Cross-cutting files only: a family's own tests are not named outside it, test_structure.)
SLOWEST_FIRST = (
    "test_ray.py",
    "test_interrupt.py",
    "test_timm_format.py",
    "test_safetensors_writer.py",
    "test_hub.py",
    "test_tasks.py",
    "test_kernels.py",
    "test_pipeline.py",
    "test_output_errors.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


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


class SmallDisk:
    """Small tmpfs file systems mounted for one test (full-disk cases), unmounted after it."""

    def __init__(self, root):
        self.root = root
        self.mounted = []

    def __call__(self, size: str):
        """A fresh folder on a tmpfs of ``size`` (``3m``); skips the test where none can be mounted."""
        import subprocess

        if os.geteuid() != 0:
            pytest.skip("full-disk cases mount a small tmpfs, which needs root")
        folder = self.root / f"disk{len(self.mounted)}"
        folder.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
        self.mounted.append(folder)
        return folder

    def resize(self, folder, size: str) -> None:
        import subprocess

        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    @staticmethod
    def fill(folder) -> None:
        """Take every free byte of the disk ``folder`` is on."""
        with open(folder / "filler", "wb", buffering=0) as f:
            for n in (1 << 16, 4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * n)
                except OSError:
                    pass

    def unmount(self) -> None:
        import subprocess

        for folder in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture()
def small_disk(tmp_path):
    """``small_disk("3m")`` -> a folder on a tmpfs of that size (root only; the test skips, saying
    why, elsewhere). ``small_disk.resize(folder, "16m")`` grows it, ``small_disk.fill(folder)``
    leaves it no free byte."""
    disks = SmallDisk(tmp_path)
    yield disks
    disks.unmount()
