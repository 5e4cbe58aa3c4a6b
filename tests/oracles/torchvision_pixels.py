"""The torchvision-backend image processors' pixel_values, run in a Python that has torchvision.

transformers has some processors (DINOv3's) in its torchvision backend only, and PyPI's
torchvision does not import beside the torch bbx's test environment pins. This script runs in a
separate environment that has torch, torchvision and transformers, and answers through files, so
that the tests can compare bbx with the real processor::

    python tests/oracles/torchvision_pixels.py IN.npz OUT.npz

``IN.npz`` holds ``config`` (a JSON list of preprocessor_config.json dicts) and ``image_<i>``
(uint8 ``[H, W, 3]`` RGB images); ``OUT.npz`` gets ``pixels_<c>_<i>`` (float32 ``[3, h, w]``) for
recipe ``c`` and image ``i``, each image processed alone (as bbx does), its :func:`digest` as
``digest_<c>_<i>``, and ``versions`` (torch, torchvision and transformers, a JSON string).
tests/data/torchvision_pixels.npz is such an input with the digests of the answer, which the tests
check bbx against without the oracle; set ``BBX_TORCHVISION_PYTHON`` to such a Python (a command
line) and they also run it live.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def digest(pixels: Any) -> str:
    """SHA-256 of a float32 array's bytes, C order: equal digests are equal arrays, bit for bit."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()


def main(src: str, dst: str) -> None:
    import numpy as np
    import torch
    import torchvision
    import transformers
    from PIL import Image
    from transformers import AutoImageProcessor

    data = np.load(src)
    configs = json.loads(str(data["config"]))
    count = sum(1 for k in data.files if k.startswith("image_"))
    out: dict[str, Any] = {}
    for c, pre in enumerate(configs):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "preprocessor_config.json").write_text(json.dumps(pre))
            proc = AutoImageProcessor.from_pretrained(folder)
        assert proc.backend == "torchvision", type(proc)
        for i in range(count):
            got = proc(Image.fromarray(data[f"image_{i}"], "RGB"), return_tensors="pt")["pixel_values"][0]
            out[f"pixels_{c}_{i}"] = got.numpy().astype(np.float32)
            out[f"digest_{c}_{i}"] = np.array(digest(out[f"pixels_{c}_{i}"]))
    versions = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
    }
    out["versions"] = np.array(json.dumps(versions))
    np.savez(dst, **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
