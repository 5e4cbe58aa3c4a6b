"""ConvNeXt V2 (Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked
Autoencoders", 2023), transformers layout: what bbx knows about it without torch. The network is
in :mod:`bbx.families.convnextv2.model`.

Stages: ``stem`` (the patchify embedding after its LayerNorm, stride ``patch_size``) and
``stage1`` ... ``stageN`` (each after its blocks, N = ``num_stages``), the tensors transformers'
ConvNextV2Backbone returns (extra ``depths`` / ``hidden_sizes`` entries are ignored, as transformers
never builds those stages). As in ConvNeXt, every conv is unpadded with kernel = stride, so any
input of at least ``patch_size * 2 ** (N - 1)`` pixels a side works, sizes floored at each step.
"""

from __future__ import annotations

from dataclasses import dataclass

from bbx.family import (
    ACTIVATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_SIZE,
    CatalogRow,
    Family,
    Settings,
    StageInfo,
    limit,
)


@dataclass(frozen=True)
class ConvNextV2Settings(Settings):
    """The architecture fields of a ConvNeXt V2 ``config.json``, with transformers' defaults
    (``ConvNextV2Config``: ConvNeXt's fields without the layer scale)."""

    square_fields = ("patch_size", "image_size")

    num_channels: int = limit(3, 1, 64)
    patch_size: int = limit(4, 1, 4096)
    num_stages: int = limit(4, 1, 12)
    hidden_sizes: tuple[int, ...] = limit((96, 192, 384, 768), 1, MAX_SIZE)
    depths: tuple[int, ...] = limit((3, 3, 9, 3), 0, 4096)
    hidden_act: str = "gelu"
    layer_norm_eps: float = limit(1e-12, 0, 1)
    drop_path_rate: float = 0.0  # training only; read so that a config round-trips, never used
    image_size: int = limit(224, 1, MAX_SIZE)

    def check(self) -> None:
        if self.num_stages > min(len(self.hidden_sizes), len(self.depths)):
            raise ValueError(
                f"num_stages {self.num_stages} needs at least that many hidden_sizes ({len(self.hidden_sizes)}) "
                f"and depths ({len(self.depths)})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    @property
    def widths(self) -> tuple[int, ...]:
        return self.hidden_sizes[: self.num_stages]

    def stages(self) -> list[StageInfo]:
        out = [StageInfo("stem", self.widths[0], self.patch_size)]
        stride = self.patch_size
        for i, cout in enumerate(self.widths):
            stride *= 2 if i > 0 else 1  # every stage but the first downsamples
            out.append(StageInfo(f"stage{i + 1}", cout, stride))
        return out

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        p = self.patch_size
        need = p * 2 ** (self.num_stages - 1)
        if h < need or w < need:
            raise ValueError(f"input {h}x{w} is too small: ConvNeXt V2 needs at least {need}x{need}")
        h, w = h // p, w // p  # valid convs whose kernel equals their stride: floor division
        sizes = [(h, w), (h, w)]
        for _ in range(self.num_stages - 1):
            h, w = h // 2, w // 2
            sizes.append((h, w))
        return sizes

    def parameter_count(self) -> int:
        w0 = self.widths[0]
        n = self.num_channels * w0 * self.patch_size**2 + w0 + 2 * w0  # patchify conv and its norm
        cin = w0
        for i, (d, depth) in enumerate(zip(self.widths, self.depths)):
            if i > 0:  # a channel norm, then a 2x2 conv
                n += 2 * cin + cin * d * 4 + d
            # depthwise 7x7, norm, MLP d -> 4d (with the GRN's weight and bias) -> d
            n += depth * (49 * d + d + 2 * d + d * 4 * d + 4 * d + 2 * 4 * d + 4 * d * d + d)
            cin = d
        n += sum(2 * st.channels for st in self.stages())  # ConvNextV2Backbone's stage norms
        return n + 2 * self.widths[-1]  # the final norm

    def activation_count(self, image_size: tuple[int, int]) -> int:
        """The default (input, stage maps, four times the largest) plus the widest block: its
        input, the depthwise output, its norm, and the 4x hidden layer three times (fc1, the
        activation, the GRN's output)."""
        sizes = self.map_sizes(image_size)[1:]
        widest = max((3 * d + 3 * 4 * d) * h * w for d, (h, w) in zip(self.widths, sizes))
        return super().activation_count(image_size) + widest


# --- catalog: facebook/convnextv2-* -------------------------------------------------------------
# Architecture values from transformers' convert_convnextv2_to_pytorch.py (get_convnextv2_config):
# ConvNextV2Config's defaults but for depths / hidden_sizes; image_size keeps the default 224 in
# every hub config, the 384 and 512 ones included. Preprocessing as that script saves it
# (convert_preprocessor): ConvNextImageProcessor, bicubic, ImageNet mean/std, size 224 / 384 / 512
# as a shortest edge with crop_pct 0.875 (below 384 the short side goes to 256 and 224 is cropped;
# from 384 up the image is warped to size x size and crop_pct is unused). The "22k" checkpoints are
# ImageNet-22k pre-trained and ImageNet-1k fine-tuned (their heads have 1000 classes).
_SIZES = {
    "atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024]),
    "large": ([3, 3, 27, 3], [192, 384, 768, 1536]),
    "huge": ([3, 3, 27, 3], [352, 704, 1408, 2816]),
}
_DATA = {"1k": "ImageNet-1k", "22k": "ImageNet-22k, fine-tuned on ImageNet-1k"}


def _row(alias: str, repo_id: str, size: str, data: str, resolution: int) -> CatalogRow:
    depths, widths = _SIZES[size]
    config = {
        "model_type": "convnextv2",
        "architectures": ["ConvNextV2ForImageClassification"],
        "num_channels": 3,
        "patch_size": 4,
        "num_stages": 4,
        "hidden_sizes": widths,
        "depths": depths,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "drop_path_rate": 0.0,
        "image_size": 224,
    }
    pre = {
        "crop_pct": 0.875,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_processor_type": "ConvNextImageProcessor",
        "image_std": list(IMAGENET_STD),
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": resolution},
    }
    return CatalogRow(
        alias=alias,
        repo_id=repo_id,
        config=config,
        preprocessor=pre,
        description=f"ConvNeXt V2-{size[0].upper()}{size[1:]} ({_DATA[data]}, {resolution})",
        extra_aliases=(repo_id.split("/")[1],),
    )


FAMILY = Family(
    name="convnextv2",
    title="ConvNeXt V2",
    model_types=("convnextv2",),
    settings=ConvNextV2Settings,
    processor="ConvNext",
    catalog=(
        _row("convnextv2-atto", "facebook/convnextv2-atto-1k-224", "atto", "1k", 224),
        _row("convnextv2-tiny", "facebook/convnextv2-tiny-1k-224", "tiny", "1k", 224),
        _row("convnextv2-tiny-22k", "facebook/convnextv2-tiny-22k-224", "tiny", "22k", 224),
        _row("convnextv2-base-22k", "facebook/convnextv2-base-22k-224", "base", "22k", 224),
        _row("convnextv2-large-22k-384", "facebook/convnextv2-large-22k-384", "large", "22k", 384),
        _row("convnextv2-huge-22k-512", "facebook/convnextv2-huge-22k-512", "huge", "22k", 512),
    ),
    stage_norms={
        "hf": "a channel LayerNorm (eps 1e-6) per stage, stem included: loaded from a `ConvNextV2Backbone` "
        "checkpoint, else created fresh (weight 1, bias 0)",
        "none": "raw stage outputs",
        "final": "the trained final norm (`ConvNextV2Model.layernorm`) over the channels of the last stage's map, "
        "the others raw",
    },
    tiny={
        "model_type": "convnextv2",
        "hidden_sizes": [8, 16, 24, 32],
        "depths": [1, 1, 2, 1],
    },
    notes="ConvNeXt V2 blocks carry a Global Response Normalization in their MLP: each image's maps are "
    "rescaled by statistics over all its positions, so a map depends on the whole image (and on its size), "
    "not on a neighbourhood alone.",
)
