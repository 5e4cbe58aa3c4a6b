"""``bbx.Extractor``: "this batch through this model", the one compute path of bbx.

Built once (model resolved, weights loaded, inference rewrites applied, device and dtype chosen),
then called per batch::

    ex = bbx.Extractor("resnet-50", out_indices=[1, -1], dtype="bfloat16")
    maps = ex(["a.jpg", "b.png"])        # {"stage1": [2, 256, 56, 56], "stage4": [2, 2048, 7, 7]}

``bbx extract``, ``bbx bench`` and the workers that scale out call it; its output for a batch is
what ``bbx extract`` writes for the same images, to the bit (but for the first batches of a
model's first ``bbx extract`` run on a machine, which time kernel candidates: equal to rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bbx import dtypes, hub
from bbx.errors import InputError, UsageError
from bbx.plan import EMBEDDING, POOLS, ModelPlan, check_readout, check_stage_norm, model_plan, readout_check

if TYPE_CHECKING:
    import numpy as np
    import torch


class Extractor:
    """A backbone ready for inference on one device, mapping images to their stage maps.

    ``model``: an alias, a checkpoint folder or a hub id (as for ``bbx extract --model``).
    ``out_indices`` / ``out_features``: the stages (transformers' rules; default the last).
    ``device``: auto, cpu, cuda, cuda:N or mps. ``dtype``: the compute dtype (float32, or float16 /
    bfloat16 through autocast; bfloat16 on a CPU whose bf16 kernels measure slower than its fp32
    ones computes in fp32 and rounds the maps to bf16). ``stage_norm``: hf, none or final.
    ``image_size``: N for NxN inputs or (height, width) instead of the checkpoint's; ``resize``:
    crop (the checkpoint's recipe), squash or pad (the whole image). ``pool``: none (maps
    ``[N, C, H, W]``), avg or max (``[N, C]``), cls (each stage's class token, ``[N, C]``, for
    vision transformers that have one).
    ``embedding``: also return the model's own image embedding ``[N, D]`` as ``"embedding"``
    (CLIP's projected class token, SigLIP's pooling head, ...; the forward then runs to the last
    block).
    ``output_dtype``: the dtype of the returned tensors (float32 by default; what ``bbx extract``
    stores with ``--store-dtype``). ``pretrained=False``: random weights (seed 0), offline.
    ``exif`` / ``fast_decode``: how image files are decoded, as in ``bbx extract``.
    ``kernel_trial``: on the CPU, let the first full batches of :meth:`run` check this machine's
    kernel choice on this model (:class:`bbx.nn.kernels.ModelTrial`; ``bbx extract`` does): those
    batches then run different kernels, so their maps differ from a rerun's by rounding. Without
    it (the default) every call runs the same kernels: a pick an earlier trial cached, else the
    machine's choice.
    """

    def __init__(
        self,
        model: str,
        *,
        out_indices: Sequence[int] | None = None,
        out_features: Sequence[str] | None = None,
        device: str = "auto",
        dtype: str = "float32",
        stage_norm: str = "hf",
        image_size: int | tuple[int, int] | None = None,
        resize: str = "crop",
        pool: str = "none",
        embedding: bool = False,
        output_dtype: str = "float32",
        pretrained: bool = True,
        revision: str | None = None,
        exif: bool = True,
        fast_decode: bool = False,
        channels_last: bool | None = None,
        compile: bool = False,
        kernel_trial: bool = False,
        _plan: ModelPlan | None = None,
    ) -> None:
        from bbx.loading import load_for_inference
        from bbx.runtime import compute_context, keep_freed_memory, resolve_device

        if pool not in POOLS:
            raise UsageError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        check_stage_norm(stage_norm)
        self.dtype = dtypes.get(dtype, "dtype").name
        self.output_dtype = dtypes.get(output_dtype, "store-dtype").name
        self.device = resolve_device(device)
        if self.device == "cpu":
            keep_freed_memory()  # no page faults for every new tensor of every batch
        self._autocast = compute_context(self.device, self.dtype)
        if _plan is None:
            require = readout_check(model, pool=pool, embedding=embedding)
            ref = hub.resolve(model, revision=revision, weights=pretrained, require=require)
            _plan = model_plan(
                ref, image_size=image_size, resize=resize, out_indices=out_indices, out_features=out_features
            )
        check_readout(_plan.ref.spec, model, pool=pool, embedding=embedding)  # before any weights are loaded
        self.plan = _plan
        self.pool = pool
        self.embedding = embedding
        self.stage_norm = stage_norm
        self.exif = exif
        self.fast_decode = fast_decode
        self.compiled = compile
        self.kernel_trial = kernel_trial
        self.model, self.channels_last = load_for_inference(
            _plan.ref,
            pretrained=pretrained,
            stage_norm=stage_norm,
            out_indices=_plan.selection.out_indices,
            out_features=None,
            device=self.device,
            channels_last=channels_last,
            compile=compile,
            cls=pool == "cls",
            embedding=embedding,
        )
        self._trial = self._kernel_trial()

    @classmethod
    def from_plan(cls, plan: ModelPlan, **options: Any) -> Extractor:
        """An extractor for a model already resolved and planned (by ``bbx extract``)."""
        return cls(plan.ref.given, _plan=plan, **options)

    # -- what it produces -------------------------------------------------------------------------
    @property
    def ref(self) -> hub.ModelRef:
        return self.plan.ref

    @property
    def stages(self) -> list[str]:
        """The names of the returned stages, in order."""
        return list(self.plan.selection.out_features)

    @property
    def outputs(self) -> list[str]:
        """The names of the returned tensors, in order: the stages, then ``"embedding"`` when asked for."""
        return self.stages + ([EMBEDDING] if self.embedding else [])

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of every preprocessed image."""
        return self.plan.input_size

    @property
    def preprocess(self) -> Any:
        """The preprocessing recipe (:class:`bbx.preprocess.Preprocess`)."""
        return self.plan.preprocess

    # -- images -> uint8 pixels -------------------------------------------------------------------
    def load(self, image: str | Path | bytes | Any) -> np.ndarray:
        """One image (a path, an image file's bytes or a binary file object, or a PIL image taken
        as it is) -> its preprocessed uint8 pixels ``[H, W, 3]`` (float32 rescaled pixels for a
        recipe that resizes floats, DINOv3's); :class:`bbx.images.ImageError` when it cannot be used."""
        from bbx import images

        if isinstance(image, (str, Path)):
            pixels = images.load(Path(image), self.preprocess, exif=self.exif, fast_decode=self.fast_decode)
        elif isinstance(image, (bytes, bytearray, memoryview)) or hasattr(image, "read"):
            pixels = images.load(image, self.preprocess, exif=self.exif, fast_decode=self.fast_decode)
        else:
            pixels = images.prepare(image, self.preprocess)
        h, w = self.input_size
        if tuple(pixels.shape[:2]) != (h, w):
            raise images.ImageError(f"preprocessing gave {pixels.shape[0]}x{pixels.shape[1]} pixels, expected {h}x{w}")
        return pixels

    def load_with_geometry(self, image: str | Path | bytes | Any) -> tuple[np.ndarray, Any]:
        """:meth:`load`, with where the pixels came from (:class:`bbx.images.Geometry`: the image's
        size and the box of it the input covers)."""
        from bbx import images

        if isinstance(image, (str, Path)):
            pixels, geometry = images.load_with_geometry(
                Path(image), self.preprocess, exif=self.exif, fast_decode=self.fast_decode
            )
        elif isinstance(image, (bytes, bytearray, memoryview)) or hasattr(image, "read"):
            pixels, geometry = images.load_with_geometry(
                image, self.preprocess, exif=self.exif, fast_decode=self.fast_decode
            )
        else:
            pixels, geometry = images.prepare(image, self.preprocess), images.geometry_of(image, self.preprocess)
        h, w = self.input_size
        if tuple(pixels.shape[:2]) != (h, w):
            raise images.ImageError(f"preprocessing gave {pixels.shape[0]}x{pixels.shape[1]} pixels, expected {h}x{w}")
        return pixels, geometry

    # -- the batch --------------------------------------------------------------------------------
    def __call__(self, images: Sequence[str | Path | Any] | Any) -> dict[str, torch.Tensor]:
        """``{stage: tensor}`` on the CPU for a list of paths or PIL images, or for a uint8 batch
        already preprocessed (``[N, H, W, 3]`` numpy array or tensor)."""
        import numpy as np

        from bbx.images import ImageError

        if hasattr(images, "dtype") and hasattr(images, "shape"):
            return self.run(images)
        arrays = []
        for item in images:
            try:
                arrays.append(self.load(item))
            except ImageError as e:
                raise InputError(f"{item}: {e.reason}") from None
        if not arrays:
            raise UsageError("no images to extract")
        return self.run(np.stack(arrays))

    def _kernel_trial(self) -> Any:
        """On the CPU, the check of this machine's kernel choice on this model's own batches
        (:class:`bbx.nn.kernels.ModelTrial`), keyed by what decides the model's speed."""
        if self.device != "cpu" or self.compiled:
            return None
        import torch

        import bbx
        from bbx.family import thaw
        from bbx.nn import kernels

        plan = self.plan
        model = {
            "family": plan.ref.family.name,
            "config": thaw(plan.ref.config),
            "stages": list(plan.selection.out_indices),
            "input": list(plan.input_size),
            "pool": self.pool,
            "embedding": self.embedding,
            "stage_norm": self.stage_norm,
            "output_dtype": self.output_dtype,
            "channels_last": self.channels_last,
            "threads": torch.get_num_threads(),
            "bbx": bbx.__version__,
        }
        return kernels.ModelTrial(model, self.dtype)

    @property
    def kernels(self) -> dict[str, Any] | None:
        """Which kernels the model runs with on this CPU and where that choice came from (the
        machine's, this run's trial, or a cached trial); None off the CPU or before a batch."""
        return self._trial.state() if self._trial is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The model alone on a normalised float batch ``[N, 3, H, W]`` on the device (in the
        model's memory format), under the compute dtype: the selected stages' maps (class tokens
        with ``pool="cls"``), then the embedding if asked for, as computed (with the kernels a
        trial of this model picked, never running one: see ``kernel_trial``)."""
        return tuple(self._kerneled(x.shape[0], lambda: self._laned(self._forward, x), trial=False))

    def _kerneled(self, images: int, fn: Any, *, trial: bool) -> Any:
        """``fn()``, a batch of ``images``, under this model's kernels (:meth:`_kernel_trial`)."""
        return fn() if self._trial is None else self._trial.run(images, fn, trial=trial)

    def _laned(self, fn: Any, x: torch.Tensor) -> list[torch.Tensor]:
        """``fn(x)`` (a list of batch-first tensors), or, where lanes run (:meth:`_lanes`), ``fn``
        over each lane's share of ``x`` at once, its results concatenated in batch order."""
        import torch

        lanes = self._lanes(x)
        if lanes == 1:
            return list(fn(x))
        from bbx.nn import kernels

        parts = kernels.in_lanes(fn, x, lanes)
        with torch.inference_mode():
            return [torch.cat(ms) for ms in zip(*parts)]

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import torch

        if self._float32_for(x):
            # this CPU's bf16 matmuls and convolutions both measured slower than its fp32 ones (no
            # bf16 instructions): the whole forward runs in fp32 and its maps are rounded to bf16,
            # more precise than autocast and as fast as fp32, rather than leaving the ops between
            # the layers (depthwise convs, attention, norms) in slow emulated bf16
            with torch.inference_mode():
                return tuple(m.to(torch.bfloat16) for m in self.model(x))
        with torch.inference_mode(), self._autocast():  # thread-local: entered in each lane
            return self.model(x)

    def _float32_for(self, x: torch.Tensor) -> bool:
        if self.dtype != "bfloat16" or x.device.type != "cpu" or self.compiled:
            return False
        from bbx.nn import kernels

        c = kernels.choice("bfloat16")
        return c.linear == c.conv == "float32"

    def _lanes(self, x: torch.Tensor) -> int:
        """How many lanes the batch ``x`` runs in: torch's thread count on a CPU whose measured
        kernel choice says lanes win (:mod:`bbx.nn.kernels`), at most one per image; else 1."""
        import torch

        threads = torch.get_num_threads()
        if self.device != "cpu" or threads < 2 or x.shape[0] < 2 or self.compiled or self.dtype == "float16":
            return 1
        from bbx.nn import kernels

        return min(threads, x.shape[0]) if kernels.choice(self.dtype).lanes else 1

    def run(self, batch: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """The stage maps of a uint8 batch ``[N, H, W, 3]`` (the preprocessed pixels; float32 for a
        recipe that resizes floats: what :meth:`load` returns, stacked), normalised
        on the device: ``{stage: [N, C, H, W]}`` (``[N, C]`` pooled) on the CPU, in stage order,
        then ``{"embedding": [N, D]}`` when asked for."""
        import torch

        from bbx import images

        host = torch.as_tensor(batch)
        want = torch.float32 if self.preprocess.float_pixels else torch.uint8
        if host.dtype != want or host.dim() != 4 or host.shape[3] != 3:
            kind = str(want).removeprefix("torch.")
            raise UsageError(f"a preprocessed batch is {kind} [N, H, W, 3], got {host.dtype} {list(host.shape)}")
        if tuple(host.shape[1:3]) != self.input_size:
            h, w = self.input_size
            raise UsageError(f"a batch of {host.shape[1]}x{host.shape[2]} images; this model takes {h}x{w}")
        dev = torch.device(self.device)
        cuda = dev.type == "cuda"
        if cuda:
            host = host.pin_memory()
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

        def through(pixels: torch.Tensor) -> list[torch.Tensor]:
            x = images.normalize(pixels.to(dev, non_blocking=cuda), self.preprocess, memory_format=memory_format)
            return self._finish(self._forward(x))

        # in lanes, each normalises, runs and lays out its share: the copies run in parallel too
        # with kernel_trial, the first full batches of a model on this CPU time the kernel candidates
        maps = self._kerneled(host.shape[0], lambda: self._laned(through, host), trial=self.kernel_trial)
        return dict(zip(self.outputs, maps))

    def _finish(self, maps: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The model's outputs as returned: pooled as asked, in the output dtype, contiguous, on
        the CPU."""
        import torch

        store = dtypes.DTYPES[self.output_dtype].torch()
        out = []
        with torch.inference_mode():
            for name, m in zip(self.outputs, maps):
                if name == EMBEDDING or self.pool == "cls":
                    pass  # already [N, D] / [N, C]
                elif self.pool == "avg":
                    m = m.float().mean(dim=(2, 3))
                elif self.pool == "max":
                    m = m.amax(dim=(2, 3))
                out.append(m.to(store).contiguous().cpu())
        return out
