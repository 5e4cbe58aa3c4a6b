"""The timm oracle: a small server run with the oracle venv's python (timm needs torchvision, which
does not import beside bbx's torch), answering one JSON request per line on stdin with one JSON
line on stdout. Tests reach it through :mod:`tests.oracle`; nothing in bbx imports it.

Requests (``op``):

* ``make``: a random-weight checkpoint of ``arch`` (timm's entrypoint, plus ``model_args``) in
  ``folder``, weights and norm statistics randomised as :func:`tests.util.randomize_` does
  (``seed``), laid out as a timm hub repo (``layout: hub``: timm's own ``save_for_hf``,
  config.json with architecture, model_args and pretrained_cfg) or as transformers'
  ``TimmBackbone`` (``layout: timm_backbone``: its ``save_pretrained``).
* ``features``: timm's ``features_only`` model of the folder (``create_model("local-dir:...")``,
  ``out_indices``, ``img_size``) on the float batch in ``input`` (safetensors ``x``), its maps
  written to ``out`` as ``0``, ``1``, ...; NHWC outputs (Swin) are permuted to NCHW and the reply
  says so. With ``norm``: ``forward_intermediates(norm=True)`` of the full model instead. With
  ``timm_backbone``: transformers' ``TimmBackbone.from_pretrained`` of the folder.
* ``transform``: timm's eval transform (``resolve_data_config`` with the folder's pretrained_cfg
  and the optional ``input_size`` override, ``create_transform``) on the image files ``images``
  opened with Pillow and ``convert("RGB")``, the batch written to ``out`` as ``x``.
* ``info``: timm's feature_info and pretrained_cfg for an architecture (``arch``, ``model_args``).
* ``task_make`` / ``task_features``: a transformers task model carrying a timm backbone (``cls``
  and its ``config``, as DETR's ``use_timm_backbone``) saved in the hub layout, and the maps of its
  backbone module (``module``, an attribute path) on ``input``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _randomize(model: torch.nn.Module, seed: int) -> None:
    from tests.util import randomize_

    randomize_(model.eval(), seed)


def make(req: dict) -> dict:
    import timm

    folder = Path(req["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    args = req.get("model_args") or {}
    if req.get("layout", "hub") == "timm_backbone":
        from transformers import TimmBackbone, TimmBackboneConfig

        cfg = TimmBackboneConfig(
            backbone=req["arch"], use_pretrained_backbone=False, out_indices=req.get("out_indices")
        )
        model = TimmBackbone(cfg)
        _randomize(model, req.get("seed", 0))
        model.save_pretrained(folder)
        return {"keys": len(model.state_dict())}
    if req.get("layout") == "timm_wrapper":
        from transformers import TimmWrapperConfig, TimmWrapperModel

        model = TimmWrapperModel(TimmWrapperConfig(architecture=req["arch"], model_args=args or None))
        _randomize(model, req.get("seed", 0))
        model.save_pretrained(folder)
        return {"keys": len(model.state_dict())}
    from timm.models import save_for_hf

    model = timm.create_model(req["arch"], pretrained=False, **args)
    _randomize(model, req.get("seed", 0))
    save_for_hf(model, str(folder), model_args=args or None, safe_serialization=True)
    if req.get("pretrained_cfg"):  # overrides of the eval preprocessing (crop modes and the like)
        config = json.loads((folder / "config.json").read_text())
        config["pretrained_cfg"].update(req["pretrained_cfg"])
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return {"keys": len(model.state_dict())}


def _load_x(path: str, dtype: str) -> torch.Tensor:
    from safetensors.torch import load_file

    x = load_file(path)["x"]
    return x.to(getattr(torch, dtype)) if dtype != "float32" else x


def _save(out: str, maps: list[torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({str(i): m.detach().float().contiguous() for i, m in enumerate(maps)}, out)


def features(req: dict) -> dict:
    import timm

    x = _load_x(req["input"], req.get("dtype", "float32"))
    indices = req.get("out_indices")
    kwargs = {}
    if req.get("img_size"):
        kwargs["img_size"] = req["img_size"]
    info: dict = {}
    with torch.no_grad():
        if req.get("timm_backbone"):
            from safetensors.torch import load_file
            from transformers import TimmBackbone, TimmBackboneConfig

            # (TimmBackbone.from_pretrained takes its argument for a timm model name)
            cfg = TimmBackboneConfig.from_pretrained(req["folder"])
            if indices is not None:
                cfg.out_indices = indices
            model = TimmBackbone(cfg).eval()
            model.load_state_dict(load_file(str(Path(req["folder"]) / "model.safetensors")))
            maps = list(model(x).feature_maps)
        elif req.get("timm_wrapper"):  # timm's network with TimmWrapper's weights, its own intermediates
            from safetensors.torch import load_file

            config = json.loads((Path(req["folder"]) / "config.json").read_text())
            model = timm.create_model(config["architecture"], pretrained=False, **(config.get("model_args") or {}))
            state = load_file(str(Path(req["folder"]) / "model.safetensors"))
            model.load_state_dict({k.removeprefix("timm_model."): v for k, v in state.items()}, strict=False)
            maps = model.eval().forward_intermediates(x, indices=indices, intermediates_only=True)
        elif req.get("norm"):
            model = timm.create_model(f"local-dir:{req['folder']}", pretrained=True, **kwargs).eval()
            # (NCHW whatever the model's own layout: output_fmt defaults to it)
            maps = model.forward_intermediates(x, indices=indices, norm=True, intermediates_only=True)
        else:
            if indices is not None:
                kwargs["out_indices"] = indices
            model = timm.create_model(f"local-dir:{req['folder']}", pretrained=True, features_only=True, **kwargs)
            model = model.eval()
            if req.get("dtype", "float32") != "float32":
                model = model.to(getattr(torch, req["dtype"]))
            maps = model(x)
            fmt = getattr(model, "output_fmt", "NCHW")
            fmt = getattr(fmt, "value", fmt)
            info["output_fmt"] = str(fmt)
            if info["output_fmt"] == "NHWC":
                maps = [m.permute(0, 3, 1, 2) for m in maps]
            fi = model.feature_info
            info["feature_info"] = {"module": fi.module_name(), "channels": fi.channels(), "reduction": fi.reduction()}
    _save(req["out"], list(maps))
    return info


def transform(req: dict) -> dict:
    from PIL import Image
    from safetensors.torch import save_file
    from timm.data import create_transform, resolve_data_config

    config = json.loads((Path(req["folder"]) / "config.json").read_text())
    args = {"input_size": (3, req["input_size"], req["input_size"])} if req.get("input_size") else {}
    data = resolve_data_config(args, pretrained_cfg=config.get("pretrained_cfg") or {})
    t = create_transform(**data, is_training=False)
    batch = []
    for p in req["images"]:
        with Image.open(p) as im:
            batch.append(t(im.convert("RGB")))
    save_file({"x": torch.stack(batch).contiguous()}, req["out"])
    return {"data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}}


#: the in-place ops timm's weight inits use; on a meta tensor they change nothing a shape shows
_INIT_OPS = ("clamp_", "normal_", "uniform_", "erfinv_", "mul_", "add_", "fill_", "zero_")


@contextlib.contextmanager
def _free_meta_init():
    """The weight-init ops no-ops on meta tensors: on meta, torch runs Python references of
    some (clamp, normal: 2-4 ms a call, most of building a model on meta; the 114 architectures
    took 43 s)."""
    real = {name: getattr(torch.Tensor, name) for name in _INIT_OPS}

    def skip(op):
        def method(self, *args, **kwargs):
            return self if self.is_meta else op(self, *args, **kwargs)

        return method

    for name, op in real.items():
        setattr(torch.Tensor, name, skip(op))
    try:
        yield
    finally:
        for name, op in real.items():
            setattr(torch.Tensor, name, op)


def info(req: dict) -> dict:
    import timm

    with torch.device("meta"), _free_meta_init():  # shapes only: the giants cost nothing
        model = timm.create_model(req["arch"], pretrained=False, **(req.get("model_args") or {}))
    cfg = dict(model.pretrained_cfg)
    fi = [{"module": f["module"], "channels": f["num_chs"], "reduction": f["reduction"]} for f in model.feature_info]
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    keep = ("tag", "input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
    return {
        "feature_info": fi,
        "pretrained_cfg": {k: list(cfg[k]) if isinstance(cfg.get(k), tuple) else cfg.get(k) for k in keep},
        "shapes": shapes,
    }


def _task_model(cls_name: str, config: dict):
    import transformers

    cfg_cls = getattr(transformers, cls_name.replace("ForObjectDetection", "Config"))
    return getattr(transformers, cls_name)(cfg_cls(**config))


def task_make(req: dict) -> dict:
    """A random-weight transformers task model (``cls``, e.g. a detection model) built from
    ``config`` (its timm backbone included) and saved in the hub layout in ``folder``."""
    model = _task_model(req["cls"], req["config"])
    _randomize(model, req.get("seed", 0))
    model.save_pretrained(req["folder"])
    return {"keys": len(model.state_dict())}


def task_features(req: dict) -> dict:
    """The maps of a saved task model's backbone module (``module``: attribute path, called with
    the batch and an all-valid pixel mask, returning (map, mask) pairs) on ``input``."""
    import transformers

    model = getattr(transformers, req["cls"]).from_pretrained(req["folder"]).eval()
    module = model
    for part in req["module"].split("."):
        module = getattr(module, part)
    x = _load_x(req["input"], "float32")
    with torch.no_grad():
        pairs = module(x, torch.ones(x.shape[0], *x.shape[2:], dtype=torch.long))
    _save(req["out"], [m for m, _ in pairs])
    return {}


OPS = {
    "make": make,
    "features": features,
    "transform": transform,
    "info": info,
    "task_make": task_make,
    "task_features": task_features,
}


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            reply = {"ok": True, **OPS[req["op"]](req)}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
