"""Resolved checkpoint -> ready backbone: build the family's network, then load its weights."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from bbx import hub, weights
from bbx.errors import ModelError, UsageError
from bbx.family import STAGE_NORMS
from bbx.nn.backbone import Backbone
from bbx.plan import RANDOM_SEED, check_weights


def build(ref: hub.ModelRef, *, stage_norm: str = "hf", device: str | torch.device = "cpu") -> Backbone:
    """The network ``ref``'s config describes, with parameters on ``device`` (``"meta"``: shapes
    only, nothing allocated) and the family's own random initialisation."""
    if stage_norm not in STAGE_NORMS:
        raise UsageError(f"stage norm must be hf, none or final, got {stage_norm!r}")
    settings = ref.family.parse(ref.config, f"{ref.checkpoint}: config.json")  # one line for a config that does not fit
    if str(device) != "meta":
        check_weights(ref, settings)
    try:
        with torch.device(device):
            model = ref.family.build(ref.config, stage_norm=stage_norm)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{ref.checkpoint}: config.json does not describe a valid {ref.model_type}: {e}") from None
    return model.eval()


def load_pretrained(ref: hub.ModelRef, *, stage_norm: str = "hf", keep_through: int | None = None) -> Backbone:
    """Build on the meta device and assign the checkpoint's tensors (only the backbone's, strict,
    after the format's prefix and rename and the family's key remap): no random initialisation, no
    second copy of the weights. ``keep_through``: truncate the network after that stage first
    (the checkpoint is still checked against the whole network)."""
    if ref.folder is None:
        raise ModelError(f"{ref.given}: no local files to load weights from")
    model = build(ref, stage_norm=stage_norm, device="meta")
    whole = model.state_dict(keep_vars=True)
    if keep_through is not None:
        model.truncate(keep_through)
    raw = weights.read_state_dict(ref.folder, select=ref.spec.backbone_keys)
    if not raw and ref.spec.weight_prefix:
        raise ModelError(
            f"weights in {ref.checkpoint} have no tensors under {ref.spec.weight_prefix!r}, where this "
            f"{ref.spec.task or 'checkpoint'}'s backbone should be (does config.json name the right architectures?)"
        )
    state = ref.family.remap(raw, ref.config)
    weights.load_strict(model, state, source=ref.checkpoint, expected=whole)
    model.init_computed_buffers()
    return model.eval()


def prepare_for_inference(
    model: Backbone, device: str | torch.device, channels_last: bool | None = None, *, compile: bool = False
) -> tuple[Backbone, bool]:
    """Frozen-inference rewrites (:meth:`Backbone.optimize_for_inference`), then ``device`` in
    eval mode; channels-last memory format where the family prefers it (``channels_last=None``) or
    as asked; ``compile``: ``torch.compile`` the forward. Returns the model and whether it is
    channels-last."""
    if channels_last is None:
        channels_last = bool(getattr(model, "prefers_channels_last", False))
    model.optimize_for_inference(fuse_kernels=not compile)
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        # (the compiler fuses for itself: the hand-fused oneDNN calls, left off above, would only
        # break its graphs)
        # compiling the bound forward keeps the module's attributes (stages, selection) reachable
        # inductor imports torch.utils.mkldnn, whose classes still use torch.jit.script_method:
        # torch's own deprecation (14 warnings), nothing bbx calls
        warnings.filterwarnings("ignore", r"`torch.jit.script_method` is deprecated", DeprecationWarning)
        model.forward = torch.compile(model.forward, dynamic=False)  # type: ignore[method-assign]
        # Swin's window tables are lru_cached pure functions of the grid size: dynamo tracing
        # through the cache is what we want, and says so at length
        warnings.filterwarnings("ignore", message=r"Dynamo detected a call to a `functools.lru_cache`")
    return model, channels_last


def load_for_inference(
    ref: hub.ModelRef,
    *,
    pretrained: bool,
    stage_norm: str,
    out_indices: Sequence[int] | None,
    out_features: Sequence[str] | None,
    device: str | torch.device,
    channels_last: bool | None = None,
    compile: bool = False,
    cls: bool = False,
    embedding: bool = False,
    truncate: bool = True,
) -> tuple[Backbone, bool]:
    """``ref``'s backbone as ``bbx extract`` and ``bbx bench`` run it: its weights (or, without
    ``pretrained``, the family's random initialisation seeded with :data:`RANDOM_SEED`), the
    stages selected and what it reads out of them (``cls``: class tokens instead of maps;
    ``embedding``: the image embedding after them, see :meth:`Backbone.readout`), then
    :func:`prepare_for_inference`. ``truncate``: the layers after the last selected stage are
    neither built nor loaded (their weights are still checked); never with ``embedding``, which
    the last block computes."""
    import time

    from bbx.stages import select_stages

    t0 = time.perf_counter()
    selection = select_stages(ref.spec.stage_names, out_indices, out_features, ref.spec.default_stages)
    last = selection.out_indices[-1] if truncate and not embedding else None
    if pretrained:
        model = load_pretrained(ref, stage_norm=stage_norm, keep_through=last)
    else:
        torch.manual_seed(RANDOM_SEED)
        model = build(ref, stage_norm=stage_norm)  # the whole network: the same random weights as always
        if last is not None:
            model.truncate(last)
    model.select(selection.out_indices)
    try:
        model.readout(cls=cls, embedding=embedding)
    except ValueError as e:  # the plan refuses these first; a caller without one gets one line too
        raise UsageError(f"{ref.checkpoint}: {e}") from None
    t1 = time.perf_counter()
    model, cl = prepare_for_inference(model, device, channels_last, compile=compile)
    #: where the loading time went (bbx extract reports it)
    model.load_seconds = {"weights_s": t1 - t0, "prepare_s": time.perf_counter() - t1}  # type: ignore[assignment]
    return model, cl


def load_backbone(
    name_or_path: str,
    out_indices: Sequence[int] | None = None,
    out_features: Sequence[str] | None = None,
    pretrained: bool = True,
    revision: str | None = None,
    *,
    stage_norm: str = "hf",
) -> Backbone:
    from bbx.stages import select_stages

    ref = hub.resolve(str(name_or_path), revision=revision, weights=pretrained)
    model = load_pretrained(ref, stage_norm=stage_norm) if pretrained else build(ref, stage_norm=stage_norm)
    # a task checkpoint's default: the stages the task model taps
    model.select(select_stages(model.stage_names, out_indices, out_features, ref.spec.default_stages).out_indices)
    model.ref = ref  # type: ignore[assignment]  (where it came from, for reports)
    return model
