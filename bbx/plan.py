"""Planning a run, without weights and without torch: the model's input size and stage shapes,
the bytes each image costs, the output's name and format, the free space, what a real run would
refuse (``--dry-run``), and which inputs a resumed output already holds.

``bbx inspect``, ``bbx bench`` and ``bbx extract`` all plan through here."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bbx import __version__, dtypes, hub
from bbx.checkpoints import Checkpoint
from bbx.errors import BbxError, InputError, ModelError, UsageError, first_line
from bbx.family import BYTES_PER_NUMBER, STAGE_NORMS, Settings, StageInfo, map_shapes, memory_needed
from bbx.formats import (
    EMBEDDING_NAME,
    RunFacts,
    StageLayout,
    busy,
    check_target,
    format_for,
    format_name,
    held_elsewhere,
    leftovers,
    name_extra,
    refuse_to_replace,
    resume_source,
    space_needed,
    suffix_of,
)
from bbx.formats.base import existing_folder
from bbx.preprocess import RESIZE_MODES, Preprocess
from bbx.report import Plan, StagePlan, human_bytes
from bbx.shards import Shard, digest
from bbx.stages import Selection, select_stages
from bbx.tars import TarMember
from bbx.tars import expand as expand_tars

#: an --image-size: N (a square) or (height, width)
ImageSize = int | tuple[int, int]
POOLS = ("none", "avg", "max", "cls")
#: the name of the image-embedding dataset (``--embedding``) beside the stages
EMBEDDING = EMBEDDING_NAME
#: HDF5 compression filters (each with byte shuffling, which groups the bytes of the floats)
COMPRESSIONS = ("none", "gzip", "lzf")
ON_ERROR = ("skip", "stop")
#: the seed of ``--no-pretrained`` runs (the family's random initialisation), so that they repeat
RANDOM_SEED = 0


@dataclass(frozen=True)
class ExtractOptions:
    """Everything ``bbx extract`` is asked to do, as one frozen value."""

    model: str
    output: Path | None = None
    format: str | None = None
    out_indices: tuple[int, ...] | None = None
    out_features: tuple[str, ...] | None = None
    image_size: ImageSize | None = None  # N or (height, width)
    resize: str = "crop"  # crop (the checkpoint's own), squash or pad
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "float32"
    store_dtype: str = "float32"
    pool: str = "none"
    embedding: bool = False  # also store the model's own image embedding
    workers: int | None = None
    overwrite: bool = False
    resume: bool = False
    force: bool = False
    exif: bool = True
    fast_decode: bool = False
    stage_norm: str = "hf"
    pretrained: bool = True
    revision: str | None = None
    shard_bytes: int | None = None
    on_error: str = "skip"
    channels_last: bool | None = None  # None: where the family prefers it (convolutional nets)
    progress: bool | None = None  # download progress bars (None: when stderr is a terminal)
    compile: bool = False  # torch.compile the model (long start-up; pays off on long runs)
    compression: str = "none"  # HDF5: none, gzip or lzf
    shard: Shard | None = None  # --shard K/N: this process's slice of the ordered inputs

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        dtypes.get(self.dtype, "dtype")
        dtypes.get(self.store_dtype, "store-dtype")
        check_stage_norm(self.stage_norm)
        if self.pool not in POOLS:
            raise UsageError(f"--pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be 0 or more, got {self.workers}")
        if self.on_error not in ON_ERROR:
            raise UsageError(f"--on-error must be skip or stop, got {self.on_error!r}")
        if self.overwrite and self.resume:
            raise UsageError("--overwrite and --resume exclude each other")
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"--compression must be none, gzip or lzf, got {self.compression!r}")


def check_readout(spec: Checkpoint, model: str, *, pool: str, embedding: bool) -> None:
    """Refuse a class token or an image embedding the model does not have, from its config alone
    (the settings know, torch-free): run before any weights are fetched or loaded."""
    settings = spec.settings()
    title = spec.family.title
    if pool == "cls" and not settings.class_token:
        raise UsageError(f"--pool cls: {model} ({title}) has no class token; pool its maps with --pool avg instead")
    if embedding and settings.embedding_dim is None:
        raise UsageError(
            f"--embedding: {model} ({title}) defines no image embedding of its own; "
            "pool a stage with --pool avg (or --pool cls) instead"
        )


def readout_check(model: str, *, pool: str, embedding: bool) -> Callable[[Checkpoint], None]:
    """:func:`check_readout` as ``hub.resolve``'s ``require``."""
    return lambda spec: check_readout(spec, model, pool=pool, embedding=embedding)


def check_stage_norm(stage_norm: str) -> None:
    if stage_norm not in STAGE_NORMS:
        raise UsageError(f"--stage-norm must be hf, none or final, got {stage_norm!r}")


# --- the model's side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPlan:
    """A model's stages and map shapes at the input size a run uses, from its config alone."""

    ref: hub.ModelRef
    preprocess: Preprocess
    input_size: tuple[int, int]
    settings: Settings
    stages: tuple[StageInfo, ...]
    shapes: tuple[tuple[int, int, int], ...]  # [C, H, W] of every stage
    selection: Selection


def image_hw(image_size: ImageSize) -> tuple[int, int]:
    """(height, width) of an image size; UsageError for anything but positive pixels."""
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        h, w = image_size
    elif isinstance(image_size, int) and not isinstance(image_size, bool):
        h = w = image_size
    else:
        raise UsageError(f"--image-size must be N or (height, width) in pixels, got {image_size!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (h, w)):
        raise UsageError(f"--image-size must be a positive number of pixels, got {image_size!r}")
    return h, w


def _size_text(h: int, w: int) -> str:
    return str(h) if h == w else f"{h}x{w}"


def _nearest(h: int, w: int, m: int) -> tuple[int, int]:
    return max(m, round(h / m) * m), max(m, round(w / m) * m)


def recipe(ref: hub.ModelRef, image_size: ImageSize | None = None, resize: str = "crop") -> Preprocess:
    """The preprocessing recipe with ``--resize`` and ``--image-size`` applied (its output size may
    still be None: a checkpoint whose own size varies, and no size given)."""
    pre = Preprocess.from_checkpoint(ref.spec)
    if resize not in RESIZE_MODES:
        raise UsageError(f"--resize must be crop, squash or pad, got {resize!r}")
    pre = pre.with_resize(resize)
    if image_size is None:
        return pre
    h, w = image_hw(image_size)
    m = pre.multiple_of
    if m > 1 and (h % m or w % m):
        raise UsageError(
            f"--image-size {_size_text(h, w)} is not a multiple of {m}, as {ref.checkpoint} needs (its task model "
            f"sees only such sizes: its processor's and its backbone's patches); try {_size_text(*_nearest(h, w, m))}"
        )
    try:
        return pre.with_image_size((h, w) if h != w else h)
    except ValueError as e:
        raise UsageError(f"--image-size {_size_text(h, w)}: {ref.checkpoint}: {first_line(e)}") from None


def input_size(
    ref: hub.ModelRef, image_size: ImageSize | None = None, resize: str = "crop"
) -> tuple[Preprocess, tuple[int, int]]:
    """The preprocessing recipe (with ``--resize`` and ``--image-size`` applied) and the size it
    produces."""
    pre = recipe(ref, image_size, resize)
    size = pre.output_size
    if size is None and pre.size_required:  # a task processor sizing each image by itself
        n = f"N, a multiple of {pre.multiple_of}" if pre.multiple_of > 1 else "N"
        raise UsageError(f"{ref.checkpoint}: {pre.size_required}; pass --image-size {n} (resized to N x N, no crop)")
    n = f"{image_hw(image_size)[0]}" if image_size is not None else ""
    if size is None and image_size is not None:  # a shortest-edge resize without a crop keeps the aspect
        raise UsageError(
            f"{ref.checkpoint}: its preprocessing resizes the shortest edge (to {n} with --image-size) "
            "without a crop, so images keep their aspect ratios and sizes differ; a batch needs one size "
            "(--resize squash or pad gives one)"
        )
    if size is None:
        raise UsageError(
            f"{ref.checkpoint}: its preprocessing does not give every image the same size "
            "(no resize or crop); pass --image-size N (or HxW)"
        )
    fixed = ref.spec.settings().fixed_input_size()
    if fixed is not None and size != fixed:
        raise UsageError(f"{ref.checkpoint} takes {fixed[0]}x{fixed[1]} inputs only, not {size[0]}x{size[1]}")
    return pre, size


def stage_shapes(settings: Settings, size: tuple[int, int], *, asked: bool = True) -> list[tuple[int, int, int]]:
    """``[C, H, W]`` of every stage at ``size``; UsageError when an input size the user ``asked``
    for does not fit, ModelError when the checkpoint's own does not (its config is broken)."""
    try:
        return map_shapes(settings, size)
    except ValueError as e:
        if asked:
            raise UsageError(f"input size {size[0]}x{size[1]} does not fit this model: {first_line(e)}") from None
        raise ModelError(
            f"the checkpoint's own input size {size[0]}x{size[1]} does not fit its architecture: {first_line(e)}"
        ) from None


def check_memory(ref: hub.ModelRef, settings: Settings, size: tuple[int, int], *, batch: int = 1) -> None:
    """Refuse, before anything is built, a model whose forward at ``size`` would not fit in this
    machine's memory: ModelError (exit 4) when its weights or one image already do not (the config
    is absurd for this machine), UsageError (exit 2) when only the batch is too large."""
    from bbx.runtime import machine_memory

    have = machine_memory()
    if have is None:
        return
    need = memory_needed(settings, size)
    h, w = size
    if need.total(1) > have:
        params = settings.parameter_count()
        raise ModelError(
            f"{ref.checkpoint}: this {ref.family.title} needs about {human_bytes(need.total(1))} of memory for "
            f"one {h}x{w} image ({params:.3g} parameters, {human_bytes(need.weights // 2)} of weights), more than "
            f"this machine's {human_bytes(have)}"
        )
    if need.total(batch) > have:
        fits = max(1, (have - need.weights - need.workspace) // max(1, need.per_image))
        raise UsageError(
            f"a batch of {batch} {h}x{w} images needs about {human_bytes(need.total(batch))} of memory with "
            f"{ref.checkpoint}, more than this machine's {human_bytes(have)}: pass --batch-size {fits} or less"
        )


def check_weights(ref: hub.ModelRef, settings: Settings) -> None:
    """Refuse (ModelError) a network whose weights alone would not fit in this machine's memory."""
    from bbx.runtime import machine_memory

    have = machine_memory()
    params = settings.parameter_count()
    if have is not None and params * BYTES_PER_NUMBER > have:
        raise ModelError(
            f"{ref.checkpoint}: this {ref.family.title} has {params:.3g} parameters, "
            f"{human_bytes(params * BYTES_PER_NUMBER)} of weights, more than this machine's "
            f"{human_bytes(have)} of memory"
        )


def model_plan(
    ref: hub.ModelRef,
    *,
    image_size: ImageSize | None = None,
    resize: str = "crop",
    out_indices: Sequence[int] | None = None,
    out_features: Sequence[str] | None = None,
    check: bool = True,
) -> ModelPlan:
    """The model's plan at its input size (or ``image_size``); ``check``: refuse a model whose
    forward would not fit this machine's memory even for one image (inspect only reports it)."""
    settings = ref.spec.settings()
    pre, size = input_size(ref, image_size, resize)
    shapes = stage_shapes(settings, size, asked=image_size is not None)
    if check:
        check_memory(ref, settings, size)
    stages = settings.stages()
    selection = select_stages([s.name for s in stages], out_indices, out_features, ref.spec.default_stages)
    return ModelPlan(ref, pre, size, settings, tuple(stages), tuple(shapes), selection)


# --- the output's side -----------------------------------------------------------------------------


#: the longest default output name bbx makes (before its suffix): well within every file
#: system's 255 bytes, with room for the names of its temporary files
DEFAULT_NAME_BYTES = 120


def default_output(model: str, stages: Sequence[str], fmt: str | None, all_stages: Sequence[str] = ()) -> Path:
    """``<model>_<stages>.h5`` in the current folder (or ``.safetensors`` with --format). A long
    selection is named by its ends (``stem-to-stage40`` for a run of consecutive stages, with the
    count and a digest of the list otherwise), a long model name is cut and given a digest, so
    the name stays under :data:`DEFAULT_NAME_BYTES`."""
    slug = model.rstrip("/").replace("\\", "/")
    if os.path.isdir(slug):
        slug = Path(slug).resolve().name
    slug = slug.replace("/", "--")
    label = "-".join(stages)
    if len(stages) > 2 and len(label) > DEFAULT_NAME_BYTES // 2:
        names = list(all_stages)
        first, last = stages[0], stages[-1]
        if first in names and names[names.index(first) : names.index(first) + len(stages)] == list(stages):
            label = f"{first}-to-{last}"
        else:
            label = f"{len(stages)}stages-{first}-to-{last}-{_digest('-'.join(stages))}"
    room = DEFAULT_NAME_BYTES - len(label.encode()) - 1
    if len(slug.encode()) > room:
        slug = slug.encode()[: max(8, room - 9)].decode(errors="ignore") + "-" + _digest(slug)
    return Path(f"{slug}_{label}" + suffix_of(format_name(fmt) if fmt else "hdf5"))


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:8]


def free_space(output: Path) -> int | None:
    """Free bytes on the disk the output's folder is (or will be) on; None if unknown."""
    parent = existing_folder(output)
    try:
        return shutil.disk_usage(parent).free
    except OSError:
        return None


#: one input of a run: an image file, or a sample of a webdataset tar
Item = Path | TarMember


@dataclass
class Inputs:
    """What a run extracts, from the ordered units it was given (files and tars): its shard's
    slice with the tars' samples listed, the tars that could not be read (wholly), and the whole
    list's length and digest (recorded in a shard's output)."""

    items: list[Item]
    unreadable: list[tuple[str, str]]
    units: int
    digest: str | None


def select_inputs(shard: Shard | None, units: Sequence[Item]) -> Inputs:
    """This run's inputs: the shard's contiguous slice of ``units`` (a tar is one unit), tars
    expanded into their samples."""
    if shard is not None and shard.whole is not None:  # handed its slice already
        count, whole_digest = shard.whole
        return Inputs(*_expanded(list(units)), count, whole_digest)
    names = [str(u) for u in units]
    chosen = list(units) if shard is None else shard.take(list(units))
    return Inputs(*_expanded(chosen), len(names), digest(names) if shard is not None else None)


def _expanded(chosen: list[Item]) -> tuple[list[Item], list[tuple[str, str]]]:
    """Tars listed into their samples (a caller may pass samples already: kept as they are)."""
    paths = [u for u in chosen if isinstance(u, Path)]
    if len(paths) == len(chosen):
        items, unreadable = expand_tars(paths)
        return list(items), unreadable
    return list(chosen), []


def facts_for(
    opts: ExtractOptions, mp: ModelPlan, stages: Sequence[StagePlan], inputs: Inputs | None = None
) -> RunFacts:
    ref = mp.ref
    shard = opts.shard
    return RunFacts(
        bbx_version=__version__,
        model=opts.model,
        checkpoint=ref.checkpoint,
        revision=ref.commit or ref.revision,
        architecture=ref.architecture,
        weights="pretrained" if opts.pretrained else f"random (seed {RANDOM_SEED})",
        out_features=tuple(s.name for s in stages),
        out_indices=tuple(s.index for s in stages),
        stage_norm=opts.stage_norm,
        input_size=mp.input_size,
        compute_dtype=opts.dtype,
        store_dtype=opts.store_dtype,
        pool=opts.pool,
        embedding=opts.embedding,
        exif=opts.exif,
        fast_decode=opts.fast_decode,
        preprocessing=mp.preprocess.describe(),
        cwd=os.getcwd(),
        compression=opts.compression,
        shard_index=None if shard is None else shard.index,
        shard_count=None if shard is None else shard.count,
        input_count=None if shard is None or inputs is None else inputs.units,
        input_digest=None if shard is None or inputs is None else inputs.digest,
    )


@dataclass
class RunPlan:
    """A planned extraction: the shape report, the model plan, the output and its facts, and the
    inputs (this shard's, tars listed)."""

    report: Plan
    model: ModelPlan
    output: Path
    fmt: str
    layouts: list[StageLayout]
    facts: RunFacts
    inputs: Inputs


def plan_run(opts: ExtractOptions, units: Sequence[Item], *, device: str | None, weights: bool) -> RunPlan:
    """Resolve the model (``weights``: fetch its weights too) and plan the run's output, over the
    ordered ``units`` (files and tars, as discovered; a shard takes its slice)."""
    opts.validate()
    inputs = select_inputs(opts.shard, units)
    require = readout_check(opts.model, pool=opts.pool, embedding=opts.embedding)
    ref = hub.resolve(opts.model, revision=opts.revision, weights=weights, progress=opts.progress, require=require)
    mp = model_plan(
        ref,
        image_size=opts.image_size,
        resize=opts.resize,
        out_indices=opts.out_indices,
        out_features=opts.out_features,
    )
    itemsize = dtypes.DTYPES[opts.store_dtype].itemsize
    stages = []
    for i in mp.selection.out_indices:
        spec = mp.stages[i]
        shape = mp.shapes[i] if opts.pool == "none" else (mp.shapes[i][0],)
        nbytes = itemsize
        for d in shape:
            nbytes *= d
        stages.append(StagePlan(i, spec.name, spec.channels, spec.stride, tuple(shape), opts.store_dtype, nbytes))
    embedding = None
    if opts.embedding:
        dim = mp.settings.embedding_dim or 0
        embedding = StagePlan(None, EMBEDDING, dim, None, (dim,), opts.store_dtype, dim * itemsize)
    output = opts.output or default_output(
        opts.model, [s.name for s in stages], opts.format, [s.name for s in mp.stages]
    )
    fmt = format_for(output, opts.format)
    if opts.shard is not None:
        output = opts.shard.output(output)
    check_target(output, extra=name_extra(fmt))
    if opts.shard_bytes is not None and fmt != "safetensors":
        raise UsageError("--shard-size applies to safetensors output only")
    if opts.compression != "none" and fmt != "hdf5":
        raise UsageError(f"--compression applies to HDF5 output only ({output.name} is {fmt})")
    facts = facts_for(opts, mp, stages, inputs)
    report = Plan(
        model=opts.model,
        checkpoint=ref.checkpoint,
        revision=ref.commit or ref.revision,
        architecture=ref.architecture,
        weights=facts.weights,
        device=device or "auto",
        compute_dtype=opts.dtype,
        store_dtype=opts.store_dtype,
        pool=opts.pool,
        stage_norm=opts.stage_norm,
        input_size=mp.input_size,
        stages=stages,
        embedding=embedding,
        inputs=len(inputs.items),
        todo=len(inputs.items),
        output=str(output),
        format=fmt,
        free_bytes=free_space(output),
        preprocessing=mp.preprocess.describe(),
        compression=opts.compression,
        weight_prefix=ref.spec.weight_prefix if ref.spec.task else "",
        shard=None if opts.shard is None else opts.shard.describe(),
    )
    layouts = [StageLayout(s.name, s.shape, opts.store_dtype) for s in stages]
    if embedding is not None:
        layouts.append(StageLayout(EMBEDDING, embedding.shape, opts.store_dtype))
    return RunPlan(report, mp, output, fmt, layouts, facts, inputs)


def check_space(plan: Plan, *, force: bool, carried: int = 0, shard_bytes: int | None = None) -> None:
    """Refuse a run whose output would not fit on its disk: the rows left to extract, plus what
    the format writes on the way (safetensors stages rows, then assembles each file; extending a
    finished HDF5 file copies it first, ``carried``; a .partial is extended in place)."""
    if force or plan.free_bytes is None:
        return
    need = space_needed(plan.format, plan.projected_bytes, carried, shard_bytes)
    if need > plan.free_bytes:
        copy = f", {human_bytes(carried)} of it for the rows already extracted" if carried else ""
        raise InputError(
            f"projected output {human_bytes(need)}{copy} exceeds the {human_bytes(plan.free_bytes)} free for "
            f"{plan.output}; free some space, choose another -o, pool with --pool, or pass --force"
        )


def preflight(opts: ExtractOptions, rp: RunPlan) -> list[BbxError]:
    """Everything a run checks before it opens its output for writing, in the order it does: the
    output (another run writing it, one to replace, one to resume with other settings), the disk
    space for what is left to do, the memory for a batch. A real run raises the first; a dry run
    reports them all and exits with the first one's status. For a resume it also counts the inputs
    left (on the report)."""
    problems: list[BbxError] = []
    carried = 0
    try:
        found, leftover = leftovers(rp.output, rp.fmt)
        if leftover is not None and held_elsewhere(leftover):
            raise busy(leftover)
        if opts.resume:
            source = resume_source(rp.output, rp.fmt) if found is not None or leftover is not None else None
            if source is not None:
                source.facts.check_resumable(rp.facts, rp.output)
                done = done_keys(source.paths, source.facts.cwd)
                rp.report.todo = sum(1 for p in rp.inputs.items if not is_done(p, done))
                carried = source.carried
        elif not opts.overwrite:
            refuse_to_replace(found, leftover, probe=False)
    except BbxError as e:
        problems.append(e)
    for check in (
        lambda: check_space(rp.report, force=opts.force, carried=carried, shard_bytes=opts.shard_bytes),
        lambda: check_memory(rp.model.ref, rp.model.settings, rp.model.input_size, batch=opts.batch_size),
    ):
        try:
            check()
        except BbxError as e:
            problems.append(e)
    return problems


# --- resume bookkeeping ----------------------------------------------------------------------------


def done_keys(paths: Sequence[str], cwd: str | None) -> set[str]:
    """The inputs an output already holds, as absolute paths (rows are stored as given, relative to
    the folder the run started in, which the output records as ``cwd``)."""
    if not cwd:
        return set(paths)
    return {os.path.normpath(os.path.join(cwd, p)) for p in paths}


def is_done(path: Item, done: set[str]) -> bool:
    name = str(path)
    return os.path.normpath(os.path.abspath(name)) in done or name in done


def begun_elsewhere(existing: RunFacts) -> bool:
    """Whether the output being resumed was begun in another folder than the current one."""
    return bool(existing.cwd) and os.path.realpath(existing.cwd) != os.path.realpath(os.getcwd())


def row_name(path: Item, absolute: bool) -> str:
    """How a row's input path is stored: as given, unless this run resumes an output begun in
    another folder (``absolute``), where a relative path would mean something else. A tar's
    sample is ``<tar>#<key>``."""
    name = str(path)
    return os.path.abspath(name) if absolute and not os.path.isabs(name) else name
