"""What a backbone family is to the rest of bbx, without torch.

A family lives in one package, ``bbx/families/<name>/``:

* ``__init__.py`` (no torch): a :class:`Settings` subclass that reads and checks the architecture
  fields of a ``config.json`` and knows the stage list and the map-size arithmetic; the catalog rows
  of the public checkpoints (aliases, hub ids, embedded configs and preprocessing); the default
  image processor; what each stage-norm mode means for the family; a tiny config for tests; and
  ``FAMILY``, the :class:`Family` record that ties them together.
* ``model.py`` (torch): the network (a :class:`bbx.nn.backbone.Backbone`), a pure
  ``remap(state_dict, config)`` from the checkpoint's keys to bbx's, and ``build(config, *,
  stage_norm)``.

:mod:`bbx.registry` discovers the packages; nothing else in bbx names a family.
"""

from __future__ import annotations

import importlib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType, ModuleType
from typing import Any, ClassVar

from bbx.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: timm's IMAGENET_INCEPTION_MEAN / _STD and OPENAI_CLIP_MEAN / _STD (transformers' too)
INCEPTION = (0.5, 0.5, 0.5)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
STAGE_NORMS = ("hf", "none", "final")
#: the ``hidden_act`` names bbx implements, with transformers' numerics (bbx.nn.layers has them)
ACTIVATIONS = (
    "relu",
    "gelu",
    "gelu_pytorch_tanh",
    "gelu_new",
    "quick_gelu",
    "silu",
    "swish",
    "tanh",
    "sigmoid",
    "relu6",
    "hardswish",
    "linear",
)


@dataclass(frozen=True)
class StageInfo:
    """One stage: its name, channel count and stride (reduction from the input)."""

    name: str
    channels: int
    stride: int


# --- reading config fields ------------------------------------------------------------------------
#
# A config field is checked for its type and range before anything is built: configs come from
# files anyone can write, and a hostile or broken one must be one line, not a traceback or a
# terabyte allocation. Settings fields say their limits in their metadata (``limit(lo, hi)``).

#: the largest value any size-like field may take (channels, depths, heads, patch and image sizes)
MAX_SIZE = 1 << 20


def limit(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    """A dataclass field with a range: ``lo <= value <= hi`` (for sequences: every item)."""
    return field(default=default, metadata={"lo": lo, "hi": hi})


def _number(value: Any, kind: type, name: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_range(value: Any, lo: float | None, hi: float | None, name: str) -> None:
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be at least {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be at most {hi}, got {value!r}")


def coerce(value: Any, hint: Any, name: str, lo: float | None = None, hi: float | None = None) -> Any:
    """``value`` read as the type ``hint`` (int, float, bool, str, tuple[int, ...], tuple[int, int],
    or an ``X | None``), range-checked; ValueError with one line otherwise."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return coerce(value, hint, name, lo, hi)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            kinds = [args[0]] * len(value)
        else:
            if len(value) != len(args):
                raise ValueError(f"{name} must have {len(args)} items, got {value!r}")
            kinds = list(args)
        if len(value) > MAX_SIZE:
            raise ValueError(f"{name} has {len(value)} items")
        out = []
        for i, (v, k) in enumerate(zip(value, kinds)):
            item = coerce(v, k, f"{name}[{i}]")
            if lo is not None or hi is not None:
                _check_range(item, lo, hi, f"{name}[{i}]")
            out.append(item)
        return tuple(out)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if hint in (int, float, bool):
        v = _number(value, hint, name)
        if hint is not bool:
            _check_range(v, lo, hi, name)
        return v
    return value  # any other type: the family checks it itself


@dataclass(frozen=True)
class Settings:
    """The architecture fields of one family's ``config.json``, typed and checked.

    Subclasses are frozen dataclasses whose fields are named as in the config and default to
    transformers' defaults; :meth:`from_config` reads the fields a config has (others keep their
    default; unknown keys are ignored), checks each against its type and ``limit``, then calls
    :meth:`check` for what relates fields to each other. ``stages()`` and ``map_sizes()`` are the
    stage list and its size arithmetic, which the model declares and tests check against real
    forward passes."""

    #: fields a config may give as an int or a pair of equal ints (transformers accepts both)
    square_fields: ClassVar[tuple[str, ...]] = ()
    #: fields a config may give as an int (a square) or a [height, width] pair; read as a pair
    pair_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in config:
                continue
            raw = config[f.name]
            if raw is None and f.default is not MISSING and f.default is not None:
                continue  # transformers fills a null with the class default
            if f.name in cls.square_fields:
                raw = square(raw, f.name)
            elif f.name in cls.pair_fields:
                raw = pair(raw, f.name)
            values[f.name] = coerce(raw, hints[f.name], f.name, f.metadata.get("lo"), f.metadata.get("hi"))
        s = cls(**cls.adjust(config, values))
        s.check()
        n = s.parameter_count()
        if n > MAX_PARAMETERS:
            raise ValueError(
                f"it describes {n:.3g} parameters ({n * BYTES_PER_NUMBER / 1e12:.3g} TB of weights), "
                f"more than any backbone bbx would build (at most {MAX_PARAMETERS:.3g})"
            )
        return s

    @classmethod
    def adjust(cls, config: Mapping[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """Rewrite the values read before the dataclass is built (defaults that depend on the
        model_type, say); the identity by default."""
        return values

    def check(self) -> None:
        """Checks across fields; ValueError with one line."""

    def stages(self) -> list[StageInfo]:  # pragma: no cover - abstract
        raise NotImplementedError

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages()]

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:  # pragma: no cover
        """(H, W) of every stage's map for an input of ``image_size``; ValueError if too small."""
        raise NotImplementedError

    def fixed_input_size(self) -> tuple[int, int] | None:
        """The only input size the architecture accepts, or None when any size works."""
        return None

    # -- memory ------------------------------------------------------------------------------------
    #
    # A config is refused before anything is built when the memory it implies does not fit (see
    # :func:`memory_needed`): the numbers come from these three, which every family implements
    # from its fields alone (no torch) and tests/test_families.py checks against real builds and
    # forward passes.

    def parameter_count(self) -> int:
        """Exactly how many numbers the network's state holds: its parameters and persistent
        buffers, as built for stage norm ``hf`` (what ``state_dict()`` would hold). 0: unknown
        (a family that has not implemented it yet; the contract test fails for it)."""
        return 0

    def activation_count(self, image_size: tuple[int, int]) -> int:
        """Per image, the most numbers alive at once during a forward at ``image_size`` (height,
        width): the input, the stage maps kept, and the widest moment inside a block (its input,
        intermediates and output). The default reads it off the stage shapes alone: the input, every
        stage map, and four times the largest (an input, two intermediates, an output); families
        whose blocks widen more (an MLP's hidden layer, attention scores) override it."""
        shapes = map_shapes(self, image_size)
        maps = [c * h * w for c, h, w in shapes]
        return self.num_channels_in() * image_size[0] * image_size[1] + sum(maps) + 4 * max(maps)

    def workspace_count(self, image_size: tuple[int, int]) -> int:
        """Numbers a forward at ``image_size`` holds once, whatever the batch: tables cached per
        input size, attention scores computed one image at a time, resampled position
        embeddings. 0 by default."""
        return 0

    def num_channels_in(self) -> int:
        return int(getattr(self, "num_channels", 3))

    # what a run may read out besides the stage maps (torch-free, so that plans, ``--dry-run`` and
    # ``inspect`` know before any weights are loaded)
    @property
    def class_token(self) -> bool:
        """Whether every stage carries a class token (``--pool cls``)."""
        return False

    @property
    def embedding_dim(self) -> int | None:
        """The width of the model's own image embedding (``--embedding``), None when it defines none."""
        return None


#: the most numbers a network's state may hold whatever the machine (about 1.1 TB in float32):
#: no public backbone comes within a hundredfold of it; a config past it is refused as it is read
MAX_PARAMETERS = 1 << 38
#: bytes per number bbx assumes for memory estimates (float32: weights load and compute in it)
BYTES_PER_NUMBER = 4


def window_stage_parameters(s: Any, *, channels: int) -> int:
    """The numbers of a shifted-window transformer's patch embedding (with its norm), patch
    mergings and blocks (two LayerNorms, qkv, output projection, relative position bias table,
    MLP), from settings ``s`` with ``embed_dim``, ``patch_size``, ``window_size``, ``dims``,
    ``num_heads``, ``depths``, ``mlp_ratio`` and ``qkv_bias`` (``channels``: the input's, whose
    name differs between the formats); the stage and final norms are the caller's."""
    embed, patch, window, mlp_ratio = s.embed_dim, s.patch_size, s.window_size, s.mlp_ratio
    qkv_bias = s.qkv_bias
    n = channels * embed * patch**2 + embed + 2 * embed
    for i, (d, h, depth) in enumerate(zip(s.dims, s.num_heads, s.depths)):
        if i > 0:  # patch merging from half the width: a norm over 4 x, then a projection to 2 x
            half = d // 2
            n += 2 * 4 * half + 4 * half * d
        hidden = int(mlp_ratio * d)
        attention = d * 3 * d + (3 * d if qkv_bias else 0) + d * d + d + (2 * window - 1) ** 2 * h
        mlp = d * hidden + hidden + hidden * d + d
        n += depth * (2 * d + attention + 2 * d + mlp)
    return n


def token_activations(
    image_size: tuple[int, int], *, channels: int, patch: int, dim: int, layers: int, hidden: int, prefix: int
) -> int:
    """Per image, a plain vision transformer's peak (``prefix`` tokens before the patches): the
    input, every stage map (the patch tokens of the stem and of each block), and the widest moment
    of a block: attention (input, norm, q/k/v and their per-head copies, output and its copy) or
    the MLP (input, norm, the ``hidden`` layer, output)."""
    h, w = image_size
    patches = (h // patch) * (w // patch)
    t = patches + prefix
    return channels * h * w + (layers + 1) * dim * patches + max(10 * dim * t, (3 * dim + hidden) * t)


def token_workspace(image_size: tuple[int, int], *, patch: int, dim: int, heads: int, prefix: int, table: int) -> int:
    """One image's attention scores and their softmax (kernels compute a few images at a time),
    and a position table of ``table`` rows resampled to the input's grid."""
    patches = (image_size[0] // patch) * (image_size[1] // patch)
    t = patches + prefix
    return 2 * heads * t * t + (table + patches) * dim


def window_stage_activations(
    grid: tuple[int, int], dim: int, heads: int, window: int, hidden: int, *, bias_hidden: int = 0
) -> int:
    """The widest moment of a shifted-window transformer stage (Swin's kind) on a ``grid`` of
    tokens: its attention (input, norm, the grid padded to whole windows and cut into them, q/k/v
    twice, output, projection, back in place; the scores with their softmax: each window's tokens
    against each other; ``bias_hidden``: a position-bias MLP's hidden layer over the window's
    relative offsets), its MLP, or its patch merging (the 2x2 gather, its norm, the input)."""
    a, b = grid
    ap, bp = -(-a // window) * window, -(-b // window) * window
    offsets = (2 * window - 1) ** 2
    attention = 2 * dim * a * b + 8 * dim * ap * bp + 2 * ap * bp * heads * window * window
    attention += offsets * (bias_hidden + heads) if bias_hidden else 0
    mlp = (3 * dim + hidden) * a * b
    merge = 3 * 2 * dim * a * b
    return max(attention, mlp, merge)


@dataclass(frozen=True)
class MemoryNeed:
    """What a forward pass needs in memory, in bytes: the weights (twice: kernels and autocast
    keep a converted copy), the per-size workspace, and the activations of one image."""

    weights: int
    workspace: int
    per_image: int

    def total(self, batch: int) -> int:
        return self.weights + self.workspace + batch * self.per_image


def memory_needed(settings: Settings, image_size: tuple[int, int]) -> MemoryNeed:
    """The memory a forward at ``image_size`` needs, from the settings' own counts."""
    b = BYTES_PER_NUMBER
    return MemoryNeed(
        weights=2 * b * settings.parameter_count(),
        workspace=b * settings.workspace_count(image_size),
        per_image=b * settings.activation_count(image_size),
    )


@dataclass(frozen=True)
class PatchTransformerSettings(Settings):
    """The fields and stage arithmetic plain vision transformers share (a square patch
    convolution, learned positions on a square grid, ``num_hidden_layers`` blocks of one width):
    ``stem`` is the token embeddings and ``stageK`` the output of block K, every stage at stride
    ``patch_size``. Families subclass it with their own defaults and checks."""

    square_fields = ("image_size", "patch_size")

    hidden_size: int = limit(768, 1, MAX_SIZE)
    num_hidden_layers: int = limit(12, 1, 4096)
    num_attention_heads: int = limit(12, 1, 4096)
    intermediate_size: int = limit(3072, 1, MAX_SIZE)
    hidden_act: str = "gelu"
    layer_norm_eps: float = limit(1e-12, 0, 1)
    image_size: int = limit(224, 1, MAX_SIZE)
    patch_size: int = limit(16, 1, 4096)
    num_channels: int = limit(3, 1, 64)

    def check(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")

    @property
    def grid(self) -> int:
        """Side of the position-embedding grid the checkpoint was trained with."""
        return self.image_size // self.patch_size

    def stages(self) -> list[StageInfo]:
        names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        return [StageInfo(name, self.hidden_size, self.patch_size) for name in names]

    def map_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        h, w = image_size
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(f"input must be at least {p}x{p} (the patch size)")
        return [(h // p, w // p)] * (self.num_hidden_layers + 1)

    #: tokens before the patches (the class token)
    prefix_tokens: ClassVar[int] = 1

    def activation_count(self, image_size: tuple[int, int]) -> int:
        return token_activations(
            image_size,
            channels=self.num_channels,
            patch=self.patch_size,
            dim=self.hidden_size,
            layers=self.num_hidden_layers,
            hidden=self.intermediate_size,
            prefix=self.prefix_tokens,
        )

    def workspace_count(self, image_size: tuple[int, int]) -> int:
        return token_workspace(
            image_size,
            patch=self.patch_size,
            dim=self.hidden_size,
            heads=self.num_attention_heads,
            prefix=self.prefix_tokens,
            table=self.grid**2,
        )

    def block_parameters(self) -> int:
        """One pre-norm block's numbers: two LayerNorms, fused qkv (biased unless ``qkv_bias`` is
        false), the output projection, the MLP."""
        d, h = self.hidden_size, self.intermediate_size
        qkv_bias = 3 * d if getattr(self, "qkv_bias", True) else 0
        return 4 * d + 3 * d * d + qkv_bias + d * d + d + d * h + h + h * d + d

    def parameter_count(self) -> int:
        """ViT's layout: blocks, a biased patch convolution, a class token with its position and
        the grid's, the final LayerNorm; families that differ add or take away."""
        d, p = self.hidden_size, self.patch_size
        embed = self.num_channels * d * p * p + d + (1 + self.grid**2) * d + d
        return self.num_hidden_layers * self.block_parameters() + embed + 2 * d


def map_shapes(settings: Settings, image_size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """``[C, H, W]`` of every stage's map for an input of ``image_size`` (height, width), from the
    family's size arithmetic alone (no torch); ValueError when the input is too small."""
    sizes = settings.map_sizes(image_size)
    return [(st.channels, h, w) for st, (h, w) in zip(settings.stages(), sizes)]


def square(value: Any, name: str) -> Any:
    """An int, or a pair of equal ints, as one int; anything else is returned for coerce to refuse."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{name} must be square (one number, or two equal ones), got {list(value)!r}")
        return value[0]
    return value


def pair(value: Any, name: str) -> tuple[int, int]:
    """An int (a square) or a [height, width] pair of positive ints."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a pair, got {value!r}")
        h, w = (coerce(v, int, name, 1, MAX_SIZE) for v in value)
        return h, w
    n = coerce(value, int, name, 1, MAX_SIZE)
    return n, n


# --- the catalog ----------------------------------------------------------------------------------


def frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType({k: _freeze(v) for k, v in d.items()})


def _freeze(v: Any) -> Any:
    if isinstance(v, Mapping):
        return frozen(v)
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def thaw(value: Any) -> Any:
    """A fresh, mutable, JSON-shaped copy (dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True, eq=False)
class CatalogRow:
    """One public checkpoint bbx knows by a short alias: the architecture fields of the hub's
    ``config.json`` and its ``preprocessor_config.json``, embedded so that ``inspect``,
    ``--dry-run`` and ``--no-pretrained`` need no download."""

    alias: str
    repo_id: str
    config: Mapping[str, Any]
    preprocessor: Mapping[str, Any]
    description: str = ""
    extra_aliases: tuple[str, ...] = ()
    #: the hub revision the row stands for (None: the repo's default branch); a row at another
    #: revision does not answer to the bare repo id, which names the default branch
    revision: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", frozen(self.config))
        object.__setattr__(self, "preprocessor", frozen(self.preprocessor))

    @property
    def model_type(self) -> str:
        """The config's model_type (for a task checkpoint, the task model's)."""
        return str(self.config["model_type"])

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the row answers to: its alias, other aliases and hub id."""
        if self.revision is not None:
            return (self.alias, *self.extra_aliases)
        return (self.alias, *self.extra_aliases, self.repo_id)

    def config_dict(self) -> dict[str, Any]:
        """A fresh, mutable copy of the embedded ``config.json``."""
        return thaw(self.config)

    def preprocessor_dict(self) -> dict[str, Any]:
        return thaw(self.preprocessor)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self.checkpoint().stage_names)

    def checkpoint(self) -> Any:
        """What the embedded config is (:class:`bbx.checkpoints.Checkpoint`), through the format seam."""
        from bbx.checkpoints import recognise

        return recognise(self.config_dict(), self.preprocessor_dict(), f"{self.alias}'s embedded config")


# --- timm checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TimmArch:
    """One timm architecture a family implements: what timm's model entrypoint of that name builds
    (its ``model_args``, under the family's Settings field names) and timm's default pretrained
    tag for it with that tag's eval preprocessing (``pretrained_cfg``: ``input_size``,
    ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``)."""

    name: str
    args: Mapping[str, Any]
    tag: str
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", frozen(self.args))
        object.__setattr__(self, "data", frozen(self.data))

    @property
    def repo_id(self) -> str:
        """The hub repo of timm's default pretrained weights for the architecture."""
        return f"timm/{self.name}.{self.tag}"


def timm_data(
    size: int | tuple[int, int],
    crop_pct: float,
    *,
    interpolation: str = "bicubic",
    crop_mode: str = "center",
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    fixed_input_size: bool = False,
) -> dict[str, Any]:
    """A timm ``pretrained_cfg``'s preprocessing fields (for the families' architecture tables),
    and ``fixed_input_size`` (timm then builds the model for ``input_size``: ``img_size``)."""
    h, w = (size, size) if isinstance(size, int) else size
    return {
        "fixed_input_size": fixed_input_size,
        "input_size": [3, h, w],
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "mean": list(mean),
        "std": list(std),
    }


@dataclass(frozen=True, eq=False)
class TimmLayout:
    """How a family reads timm checkpoints (a timm hub repo, or transformers' TimmBackbone).

    ``patterns`` (fnmatch) name the architecture names the family is for, ``architectures`` the
    ones it implements, each exactly as timm defines it. A timm ``config.json``'s ``architecture``
    (plus its ``model_args`` and ``global_pool``) becomes the family's config: ``model_type`` the
    family's first, ``architecture``, then the entrypoint's arguments, then the file's
    ``model_args`` (only the argument names in ``accepts``, or Settings fields, are allowed; any
    other is refused, never ignored). The format seam in :mod:`bbx.checkpoints` reads this; no table
    there names a family."""

    patterns: tuple[str, ...]
    architectures: tuple[TimmArch, ...]
    #: model_args that change nothing bbx computes (training-only settings, head size)
    accepts: tuple[str, ...] = ("drop_rate", "drop_path_rate", "num_classes", "global_pool", "pretrained_cfg_overlay")

    def arch(self, name: str) -> TimmArch | None:
        return next((a for a in self.architectures if a.name == name), None)

    def claims(self, name: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


@dataclass(frozen=True, eq=False)
class TimmCounterpart:
    """For a transformers-layout family: the timm architectures that are the same network in
    timm's layout (``patterns``, fnmatch), and which of the family's stages each timm stage name is
    (``stage_of``: timm stage name -> the family's, or None where it has no such stage). ``bbx
    inspect`` shows it next to a timm checkpoint's stages."""

    patterns: tuple[str, ...]
    stage_of: Callable[[str], str | None]

    def claims(self, name: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


# --- the family record ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Family:
    """Everything the rest of bbx needs to know about one family (see the module docstring)."""

    name: str  # the package name under bbx/families/
    title: str  # how people write it: "ConvNeXt"
    model_types: tuple[str, ...]  # config.json model_type values it implements
    settings: type[Settings]
    processor: str  # the image processor transformers picks when preprocessor_config.json names none
    catalog: tuple[CatalogRow, ...] = ()
    #: what each stage-norm mode returns for this family (shown by ``inspect`` and in the README)
    stage_norms: Mapping[str, str] = field(default_factory=dict)
    #: a small config of the family (a few channels, a block or two): contract tests build it
    tiny: Mapping[str, Any] = field(default_factory=dict)
    #: a paragraph for the README's model section (stage layout, tokens, input sizes)
    notes: str = ""
    #: for checkpoints that wrap the backbone in a bigger model of one of the family's model types
    #: (CLIP's vision tower in a CLIP checkpoint): config -> (the backbone's config, the weight-key
    #: prefix of its tensors, a rename of the keys under it returning None for keys to skip, or None)
    unwrap: Callable[[Mapping[str, Any]], tuple[Mapping[str, Any], str, Callable[[str], str | None] | None]] | None = (
        None
    )
    #: backbones nested in task checkpoints that this family reads in place of another family:
    #: {task model_type: (nested backbone model_types, ...)} (MaskFormer turns a nested ``swin``
    #: config into its own Swin copy, ``maskformer-swin``)
    nested: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: the timm architectures the family implements (a family of timm-layout networks), or None
    timm: TimmLayout | None = None
    #: the timm architectures that are this (transformers-layout) family's network, for ``inspect``
    timm_counterpart: TimmCounterpart | None = None

    def __post_init__(self) -> None:
        missing = [m for m in STAGE_NORMS if m not in self.stage_norms]
        if missing:
            raise RuntimeError(f"family {self.name}: stage_norms lacks {missing}")
        object.__setattr__(self, "tiny", frozen(self.tiny))

    @property
    def module_name(self) -> str:
        return f"bbx.families.{self.name}.model"

    def model(self) -> ModuleType:
        """The family's torch code (imported on first use)."""
        return importlib.import_module(self.module_name)

    def parse(self, config: Mapping[str, Any], where: str = "config.json") -> Settings:
        """The config's settings, or ModelError naming the first field that does not fit."""
        try:
            return self.settings.from_config(config)
        except (ValueError, TypeError, KeyError, OverflowError) as e:
            raise ModelError(f"{where} does not describe a valid {self.title}: {e}") from None

    def stages(self, config: Mapping[str, Any]) -> list[StageInfo]:
        return self.parse(config).stages()

    def stage_names(self, config: Mapping[str, Any]) -> list[str]:
        return [s.name for s in self.stages(config)]

    def build(self, config: Mapping[str, Any], *, stage_norm: str = "hf") -> Any:
        return self.model().build(config, stage_norm=stage_norm)

    def tiny_config(self, model_type: str | None = None) -> dict[str, Any]:
        """A fresh copy of :attr:`tiny`, for ``model_type`` (default: the family's first)."""
        config = thaw(self.tiny)
        config["model_type"] = model_type or self.model_types[0]
        return config

    def remap(self, state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
        return self.model().remap(state, config)
