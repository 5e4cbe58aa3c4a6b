"""timm's Swin Transformers (swin_*) at parity with timm on the same random weights: timm's
shifted windows (rolled, then padded; no shift where a stage's grid is the window) and its NHWC
features as [N, C, H, W]."""

from __future__ import annotations

import pytest

from bbx.errors import UsageError
from tests import oracle

SMALL = {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [2, 2, 4, 4]}


def _compare(folder, size, tmp, **kw):
    img = size if isinstance(size, int) else list(size)
    return oracle.compare(folder, size, tmp, img_size=img, **kw)


@pytest.mark.parametrize("arch", ["swin_tiny_patch4_window7_224", "swin_base_patch4_window12_384"])
def test_small_configs_match_timm(tmp_path, arch):
    args = SMALL if "window7" in arch else {**SMALL, "img_size": 384}
    folder = oracle.make(tmp_path / "ckpt", arch, model_args=args, seed=7)
    size = 224 if "window7" in arch else 384
    _compare(folder, size, tmp_path / "a")  # the last stage's grid is the window: no shift there
    _compare(folder, (256, 288) if "window7" in arch else 416, tmp_path / "b")  # padded windows
    _compare(folder, size, tmp_path / "c", stage_norm="final", inference=True)


def test_a_stage_smaller_than_the_window_is_refused(tmp_path):
    import bbx
    from bbx import hub
    from bbx.plan import ExtractOptions, model_plan

    folder = oracle.make(tmp_path / "ckpt", "swin_tiny_patch4_window7_224", model_args=SMALL, seed=7)
    with pytest.raises(UsageError, match="smaller than the 7x7 window"):
        model_plan(hub.resolve(str(folder), weights=False), image_size=160)
    assert bbx.load_backbone(str(folder)).stage_names == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert ExtractOptions(model=str(folder)).model == str(folder)


@pytest.mark.slow
def test_public_config_matches_timm(tmp_path):
    folder = oracle.make(tmp_path / "ckpt", "swin_tiny_patch4_window7_224", seed=10)
    _compare(folder, 224, tmp_path / "a")
    _compare(folder, 256, tmp_path / "b", stage_norm="final")
