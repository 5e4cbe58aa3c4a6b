"""ConvNeXt V2 (Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked
Autoencoders", 2023), transformers layout.

Loads the weights of ``ConvNextV2ForImageClassification`` (``convnextv2.`` prefix; the
``classifier`` head is dropped), ``ConvNextV2Model`` and ``ConvNextV2Backbone`` checkpoints such as
``facebook/convnextv2-atto-1k-224`` ... ``facebook/convnextv2-huge-22k-512``.

The network is ConvNeXt's (patchify stem with a channel LayerNorm; stages opened by a channel
LayerNorm and a 2x2 stride-2 conv; all inner LayerNorms at eps 1e-6) with another block: a 7x7
depthwise conv, a LayerNorm, Linear C -> 4C, the activation, a Global Response Normalization (GRN),
Linear 4C -> C and the residual sum, without a layer scale. GRN rescales each of the 4C channels of
an image by its L2 norm over all positions, divided by the mean of those norms over the channels
(plus 1e-6): ``y = w * (h * n) + b + h``. ``drop_path_rate`` is a training setting and ignored.

Stages: ``stem`` (the embedding after its LayerNorm, stride ``patch_size``) and ``stage1`` ...
``stageN``, the tensors transformers' ConvNextV2Backbone returns. Any input of at least ``patch_size
* 2 ** (N - 1)`` pixels a side works (unpadded convs, kernel = stride, sizes floored).

Stage norms (``stage_norm``):

* ``"hf"`` (default): as ConvNextV2Backbone, a channel LayerNorm (eps 1e-6) on every selected
  stage, the stem included. A checkpoint saved from ConvNextV2Backbone carries them
  (``hidden_states_norms.<stage>``); the public classification checkpoints do not, and
  transformers creates them fresh (weight 1, bias 0), as bbx does.
* ``"none"``: the raw stage outputs (ConvNextV2Model's ``hidden_states``).
* ``"final"``: the checkpoint's trained final LayerNorm (ConvNextV2Model's ``layernorm``, eps
  ``layer_norm_eps``) over the channels at every position of the last stage's map; the other
  stages raw. (ConvNextV2Model applies it to the pooled map; bbx keeps the map.)

Inference (``optimize_for_inference``): the network runs channels-last; the GRN bias is folded into
the bias of the Linear after it (``fc2(h s + b) = fc2(h s) + W b``), fc1 runs with its activation in
one oneDNN kernel over row slices that stay in cache, and the GRN scale ``s = 1 + w n`` (one factor
per image and channel) is applied where it is cheapest: to the columns of fc2's weight, one copy per
image, when an image has more positions than fc2 has outputs (then fc2 and the residual sum are one
batched matmul over the 4C activations), else to the activations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bbx.families.convnextv2 import ConvNextV2Settings
from bbx.nn.backbone import Backbone
from bbx.nn.blocks import ChannelNorm, NormDownsample, PatchifyStem
from bbx.nn.keys import rename
from bbx.nn.layers import SLICE_BYTES_PER_THREAD, activation, compute_dtype, linear_act

#: eps of every LayerNorm transformers builds with a fixed value (stem, downsampling, blocks and
#: the backbone's stage norms); only the final norm takes ``layer_norm_eps`` from the config.
INNER_EPS = 1e-6
#: GRN's guard against a zero mean norm (fixed in transformers and the original code)
GRN_EPS = 1e-6


class GRN(nn.Module):
    """Global Response Normalization over ``[N, H, W, C]`` rows, transformers' arithmetic."""

    def __init__(self, dim: int):
        super().__init__()
        # the checkpoint's shape, [1, 1, 1, C]
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def norms(self, h: torch.Tensor) -> torch.Tensor:
        """``n``: each channel's L2 norm over the positions, over the mean of those norms (+1e-6)."""
        gx = torch.linalg.vector_norm(h, ord=2, dim=(1, 2), keepdim=True)
        return gx / (gx.mean(dim=-1, keepdim=True) + GRN_EPS)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.weight * (h * self.norms(h)) + self.bias + h


class Block(nn.Module):
    """``x + fc2(grn(act(fc1(norm(dwconv7x7(x))))))``, the MLP on ``[N, H, W, C]`` rows."""

    def __init__(self, dim: int, s: ConvNextV2Settings):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=INNER_EPS)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = activation(s.hidden_act)
        self.act_name = s.hidden_act
        self.grn = GRN(4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        #: frozen inference (see the module docstring): the GRN bias lives in fc2's bias, fused kernels
        self.frozen = False
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        rows = x.permute(0, 2, 3, 1)  # a free view when x is channels-last
        if not self.frozen:
            h = self.grn(self.act(self.fc1(self.norm(y))))
            return (rows + self.fc2(h)).permute(0, 3, 1, 2)
        h, norms = self._expand(y)
        return self._project(h, norms, rows).permute(0, 3, 1, 2)

    def _expand(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h = act(fc1(norm(y)))`` and its GRN factors ``n`` (``[N, 1, 1, 4C]``, fp32). Where ``h``
        would stream through memory, it is computed image by image in slices of rows that stay
        in cache, each slice's sums of squares taken while it is there: one pass over ``h`` fewer
        than a separate norm."""
        n, height, width, dim = y.shape
        hidden, positions = self.fc1.out_features, height * width
        row_bytes = hidden * (2 if compute_dtype(y) in (torch.bfloat16, torch.float16) else 4)
        budget = SLICE_BYTES_PER_THREAD * max(1, torch.get_num_threads())
        if not self.fused or y.device.type != "cpu" or n * positions * row_bytes <= 8 * budget or not y.is_contiguous():
            h = linear_act(self.norm(y), self.fc1, self.act_name, fused=self.fused)
            return h, self.grn.norms(h).float()
        step = max(256, budget // row_bytes)
        flat = y.view(n, positions, dim)
        h: torch.Tensor | None = None
        squares = torch.empty((n, hidden), dtype=torch.float32, device=y.device)
        for i in range(n):
            for start in range(0, positions, step):
                part = linear_act(self.norm(flat[i, start : start + step]), self.fc1, self.act_name, fused=True)
                if h is None:
                    h = part.new_empty((n, positions, hidden))
                h[i, start : start + step] = part
                total = part.float().square().sum(0)
                if start == 0:
                    squares[i] = total
                else:
                    squares[i] += total
        assert h is not None
        gx = squares.sqrt().view(n, 1, 1, hidden)
        return h.view(n, height, width, hidden), gx / (gx.mean(dim=-1, keepdim=True) + GRN_EPS)

    def _project(self, h: torch.Tensor, norms: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``rows + fc2(h * s)`` for the GRN scale ``s = 1 + w n`` (its bias already in fc2's)."""
        scale = torch.addcmul(torch.ones_like(self.grn.weight), self.grn.weight, norms)  # N, 1, 1, 4C
        n, height, width, hidden = h.shape
        dim = self.fc2.out_features
        if height * width < dim or h.dtype != rows.dtype or not h.is_contiguous():
            return linear_act(h * scale.to(h.dtype), self.fc2, add=rows, fused=self.fused)
        # fc2 with the scale on its weight's columns, one weight per image: one batched matmul
        weights = (self.fc2.weight.to(h.dtype) * scale.view(n, 1, hidden).to(h.dtype)).transpose(1, 2)  # N, 4C, C
        base = (rows + self.fc2.bias.to(rows.dtype)).reshape(n, height * width, dim)
        return torch.baddbmm(base, h.view(n, height * width, hidden), weights).view(n, height, width, dim)

    @torch.no_grad()
    def freeze(self, *, kernels: bool = True) -> None:
        """Frozen inference: fold the GRN bias into fc2's bias; ``kernels``: use the fused oneDNN
        kernels."""
        if not self.frozen:
            self.fc2.bias.add_(self.fc2.weight @ self.grn.bias.view(-1))
            self.grn.bias.zero_()
            self.frozen = True
        self.fused = kernels


class Stage(nn.Module):
    """A downsampling layer (every stage but the first), then ``depth`` blocks."""

    def __init__(self, cin: int, cout: int, depth: int, downsample: bool, s: ConvNextV2Settings):
        super().__init__()
        self.down = NormDownsample(cin, cout, eps=INNER_EPS) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[Block(cout, s) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class ConvNextV2(Backbone):
    def __init__(self, config: Mapping[str, Any], stage_norm: str = "hf"):
        s = ConvNextV2Settings.from_config(config)
        super().__init__(s, config=config, stage_norm=stage_norm)
        widths = s.widths
        stages = []
        cin = widths[0]
        for i, (cout, depth) in enumerate(zip(widths, s.depths[: s.num_stages])):
            # transformers downsamples every stage but the first (stride 2; the first keeps the
            # stem's width, so it never needs a projection either)
            stages.append(Stage(cin, cout, depth, i > 0, s))
            cin = cout
        self.stem = PatchifyStem(s.num_channels, widths[0], s.patch_size, eps=INNER_EPS)
        self.stages = nn.ModuleList(stages)
        # ConvNextV2Backbone's per-stage norms, one per stage (only the selected ones are applied)
        specs = self.stage_specs
        self.stage_norms = nn.ModuleDict({spec.name: ChannelNorm(spec.channels, eps=INNER_EPS) for spec in specs})
        # ConvNextV2Model's final norm (stage_norm="final" only)
        self.final_norm = nn.LayerNorm(widths[-1], eps=s.layer_norm_eps)

        optional: dict[str, float] = {}
        for name in self.stage_norms:
            optional[f"stage_norms.{name}.weight"] = 1.0
            optional[f"stage_norms.{name}.bias"] = 0.0
        if stage_norm != "final":  # unused then: a ConvNextV2Backbone checkpoint (which lacks it) is fine
            optional["final_norm.weight"] = 1.0
            optional["final_norm.bias"] = 0.0
        self.optional_keys = optional

    #: the network runs channels-last (free permutes around the row-wise MLP); weights too
    prefers_channels_last = True

    def optimize_for_inference(self, *, fuse_kernels: bool = True) -> None:
        for stage in self.stages:
            for block in stage.blocks:
                block.freeze(kernels=fuse_kernels)

    def iter_stages(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        yield x
        for stage in self.stages:
            x = stage(x)
            yield x

    def stage_map(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        if self.stage_norm == "hf":
            raw = self.stage_norms[self.stage_specs[index].name](raw)
        elif self.stage_norm == "final" and index == len(self.stage_specs) - 1:
            raw = self.final_norm(raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return raw.contiguous()

    def explain_missing(self, missing: Sequence[str]) -> str:
        if self.stage_norm == "final" and any(k.startswith("final_norm.") for k in missing):
            return (
                "stage_norm 'final' needs the checkpoint's final LayerNorm (ConvNextV2Model's layernorm.weight "
                "and layernorm.bias), which this checkpoint lacks; use stage_norm 'hf' or 'none'"
            )
        return ""


# checkpoint key (without the ``convnextv2.`` prefix) -> bbx key; the first pattern that matches wins
_BLOCK = r"^encoder\.stages\.(\d+)\.layers\.(\d+)\."
_RULES = [
    (re.compile(r"^embeddings\.patch_embeddings\."), "stem.conv."),
    (re.compile(r"^embeddings\.layernorm\."), "stem.norm."),
    (re.compile(r"^encoder\.stages\.(\d+)\.downsampling_layer\.0\."), r"stages.\1.down.norm."),
    (re.compile(r"^encoder\.stages\.(\d+)\.downsampling_layer\.1\."), r"stages.\1.down.conv."),
    (re.compile(_BLOCK + r"layernorm\."), r"stages.\1.blocks.\2.norm."),
    (re.compile(_BLOCK + r"pwconv([12])\."), r"stages.\1.blocks.\2.fc\3."),
    (re.compile(_BLOCK + r"(dwconv|grn)\."), r"stages.\1.blocks.\2.\3."),
    (re.compile(r"^hidden_states_norms\."), "stage_norms."),
    (re.compile(r"^layernorm\."), "final_norm."),
]


def remap(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """transformers' ConvNeXt V2 keys -> bbx's. The classification head is dropped; anything else
    unrecognised is kept under its own name, so the strict load reports it."""
    return rename(state_dict, _RULES, drop=("classifier.",), strip=("convnextv2.",), first_match=True)


def build(config: Mapping[str, Any], *, stage_norm: str = "hf") -> ConvNextV2:
    return ConvNextV2(config, stage_norm=stage_norm)
