"""BEiT (Bao et al., "BEiT: BERT Pre-Training of Image Transformers", 2022), transformers layout:
what bbx knows about it without torch. The network is in :mod:`bbx.families.beit.model`.

Stages, as transformers' ``BeitBackbone`` defines them: ``stem`` is the embedding output and
``stageK`` the output of block K, each map the patch tokens only (the class token dropped) as
``[C, H // patch, W // patch]``; stride ``patch_size`` for every stage. Any input of at least one
patch a side works: the relative position bias tables (and absolute position embeddings, where a
checkpoint has them) are resampled as transformers resamples them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bbx.family import (
    ACTIVATIONS,
    MAX_SIZE,
    CatalogRow,
    Family,
    Settings,
    StageInfo,
    limit,
    token_activations,
    token_workspace,
)


@dataclass(frozen=True)
class BeitSettings(Settings):
    """The architecture fields of a BEiT ``config.json``, with transformers' defaults
    (``BeitConfig``). The semantic-segmentation fields (``pool_scales``, the auxiliary head) and
    the optional FPN (``add_fpn``) belong to heads bbx does not build."""

    square_fields = ("patch_size",)
    pair_fields = ("image_size",)

    hidden_size: int = limit(768, 1, MAX_SIZE)
    num_hidden_layers: int = limit(12, 1, 4096)
    num_attention_heads: int = limit(12, 1, 4096)
    intermediate_size: int = limit(3072, 1, MAX_SIZE)
    hidden_act: str = "gelu"
    layer_norm_eps: float = limit(1e-12, 0, 1)
    image_size: tuple[int, int] = (224, 224)
    patch_size: int = limit(16, 1, 4096)
    num_channels: int = limit(3, 1, 64)
    use_absolute_position_embeddings: bool = False
    use_relative_position_bias: bool = False
    use_shared_relative_position_bias: bool = False
    layer_scale_init_value: float = 0.1
    use_mean_pooling: bool = True
    add_fpn: bool = False
    reshape_hidden_states: bool = True

    def check(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if not self.reshape_hidden_states:
            raise ValueError("reshape_hidden_states=false (token sequences) is not supported: bbx returns [N, C, H, W]")
        gh, gw = self.grid
        if gh < 1 or gw < 1:
            raise ValueError(f"image_size {list(self.image_size)} is smaller than patch_size {self.patch_size}")
        if self.use_absolute_position_embeddings and gh != gw:
            # transformers resamples the table as a square grid: a non-square one cannot run
            raise ValueError("absolute position embeddings need a square image_size")
        if (gh * gw + 1) ** 2 > MAX_SIZE * 64:
            raise ValueError(f"a {gh}x{gw} patch grid makes relative position tables too large")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the patch grid the checkpoint was trained with (its position tables')."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def class_token(self) -> bool:
        return True

    @property
    def embedding_dim(self) -> int:
        """``BeitModel``'s ``pooler_output``: the averaged patch tokens under the pooler's norm
        (``use_mean_pooling``), else the class token under the final norm; a checkpoint without
        that norm is refused when its weights are read."""
        return self.hidden_size

    def stages(self) -> list[StageInfo]:
        names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        return [StageInfo(name, self.hidden_size, self.patch_size) for name in names]

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(f"input must be at least {p}x{p} (the patch size)")
        return [(h // p, w // p)] * (self.num_hidden_layers + 1)

    def parameter_count(self) -> int:
        d, h, p = self.hidden_size, self.intermediate_size, self.patch_size
        gh, gw = self.grid
        bias_table = ((2 * gh - 1) * (2 * gw - 1) + 3) * self.num_attention_heads
        block = 4 * d + 3 * d * d + 3 * d + d * d + d + d * h + h + h * d + d
        block += 2 * d if self.layer_scale_init_value > 0 else 0
        block += bias_table if self.use_relative_position_bias else 0
        n = self.num_hidden_layers * block + self.num_channels * d * p * p + d + d  # patches, class token
        n += (gh * gw + 1) * d if self.use_absolute_position_embeddings else 0
        n += bias_table if self.use_shared_relative_position_bias else 0
        return n + 4 * d  # the final and the pooler's LayerNorm

    def activation_count(self, image_size: tuple[int, int]) -> int:
        return token_activations(
            image_size,
            channels=self.num_channels,
            patch=self.patch_size,
            dim=self.hidden_size,
            layers=self.num_hidden_layers,
            hidden=self.intermediate_size,
            prefix=1,
        )

    def workspace_count(self, image_size: tuple[int, int]) -> int:
        """Scores and positions (:func:`token_workspace`), and the relative position biases cached
        per input size: one per block, or one shared."""
        gh, gw = self.grid
        patches = (image_size[0] // self.patch_size) * (image_size[1] // self.patch_size)
        t = patches + 1
        biases = self.num_hidden_layers if self.use_relative_position_bias else 0
        biases += 1 if self.use_shared_relative_position_bias else 0
        table = gh * gw + 1 if self.use_absolute_position_embeddings else 0
        ws = token_workspace(
            image_size,
            patch=self.patch_size,
            dim=self.hidden_size,
            heads=self.num_attention_heads,
            prefix=1,
            table=table,
        )
        return ws + biases * self.num_attention_heads * t * t


# --- catalog: microsoft/beit-{base,large}-patch16-224-pt22k[-ft22k] ---------------------------------
# Values from transformers' convert_beit_unilm_to_pytorch.py over BeitConfig's defaults (as the hub's
# config.json files spell them out): the pt22k masked-image-modelling checkpoints share one relative
# position bias table and keep the pretraining head's final LayerNorm; the ft22k classifiers have a
# table per layer and mean pooling (their final norm normalises the averaged patches). The large
# model: width 1024, MLP 4096, 24 blocks, 16 heads. The preprocessing is the conversion's
# BeitImageProcessor(size=224, resample=BILINEAR, do_center_crop=False), saved in the
# BeitFeatureExtractor spelling: a 224 x 224 bilinear resize, mean and std 0.5.
PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": False,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "BeitFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "reduce_labels": False,
    "resample": 2,
    "size": 224,
}
_SIZES = {"base": (768, 3072, 12, 12, "ViT-B/16"), "large": (1024, 4096, 24, 16, "ViT-L/16")}


def _row(alias: str, repo_id: str, size: str) -> CatalogRow:
    hidden, mlp, layers, heads, arch = _SIZES[size]
    finetuned = repo_id.endswith("-ft22k")
    config: dict[str, Any] = {
        "model_type": "beit",
        "architectures": ["BeitForImageClassification" if finetuned else "BeitForMaskedImageModeling"],
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": hidden,
        "image_size": 224,
        "initializer_range": 0.02,
        "intermediate_size": mlp,
        "layer_norm_eps": 1e-12,
        "layer_scale_init_value": 0.1,
        "num_attention_heads": heads,
        "num_channels": 3,
        "num_hidden_layers": layers,
        "patch_size": 16,
        "use_absolute_position_embeddings": False,
        "use_mask_token": not finetuned,
        "use_mean_pooling": True,
        "use_relative_position_bias": finetuned,
        "use_shared_relative_position_bias": not finetuned,
        "vocab_size": 8192,
    }
    what = "self-supervised on ImageNet-22k" + (", fine-tuned on ImageNet-22k" if finetuned else "")
    return CatalogRow(
        alias=alias,
        repo_id=repo_id,
        config=config,
        preprocessor=PREPROCESSOR,
        description=f"BEiT {arch} ({what})",
        extra_aliases=(repo_id.split("/")[1],),
    )


FAMILY = Family(
    name="beit",
    title="BEiT",
    model_types=("beit",),
    settings=BeitSettings,
    processor="Beit",
    catalog=(
        _row("beit-base-pt22k", "microsoft/beit-base-patch16-224-pt22k", "base"),
        _row("beit-base-pt22k-ft22k", "microsoft/beit-base-patch16-224-pt22k-ft22k", "base"),
        _row("beit-large-pt22k", "microsoft/beit-large-patch16-224-pt22k", "large"),
    ),
    stage_norms={
        "hf": "raw layer outputs (`BeitBackbone` applies no norm; its optional FPN is not built)",
        "none": "raw layer outputs",
        "final": "the trained final per-token LayerNorm on every stage (`BeitModel.layernorm` when "
        "`use_mean_pooling` is false, else the masked-image-modelling head's); refused where the checkpoint has none",
    },
    tiny={
        "model_type": "beit",
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 64,
        "use_relative_position_bias": True,
    },
    notes="BEiT maps hold the patch tokens only (the class token dropped), `[C, H/16, W/16]`; `stem` is the "
    "embedding output. Any input size works: the relative position bias tables (shared or per block) are resampled "
    "bilinearly to the input's grid as transformers does. `--pool cls` gives the class token of each stage; "
    "`--embedding` the model's pooled output where the checkpoint has its norm (the fine-tuned ones: the "
    "normalised mean of the patch tokens).",
)
