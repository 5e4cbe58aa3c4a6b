"""Tab completion that knows bbx's world: model aliases, the chosen model's stage names, the
choices of each option and the stages stored in an output file.

The shell scripts in ``completions/`` call bbx back on every Tab press (``_BBX_COMPLETE=complete_bash``
and friends); Typer parses what was typed so far and calls these functions with the context, in
which earlier options (``--model``) are already parsed. They must stay cheap: no torch, no numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import typer

Items = list[tuple[str, str]]  # (value, help) pairs: zsh and fish show the help next to the value


def _matching(candidates: Iterable[tuple[str, str]], incomplete: str) -> Items:
    low = incomplete.lower()
    return [(v, h) for v, h in candidates if v.lower().startswith(low)]


def choices(*pairs: tuple[str, str]) -> Callable[[str], Items]:
    """A completion callback offering fixed values."""

    def complete(incomplete: str) -> Items:
        return _matching(pairs, incomplete)

    return complete


DEVICES = choices(
    ("auto", "CUDA when present, else CPU"),
    ("cpu", "the CPU"),
    ("cuda", "the first CUDA device"),
    ("mps", "Apple Metal"),
)
DTYPES = choices(
    ("float32", "single-precision float"),
    ("float16", "half-precision float"),
    ("bfloat16", "bfloat16"),
)
FORMATS = choices(("hdf5", ".h5 file"), ("safetensors", ".safetensors file or shards"))
POOLS = choices(
    ("none", "maps [N, C, H, W]"),
    ("avg", "mean over H, W: [N, C]"),
    ("max", "max over H, W: [N, C]"),
    ("cls", "the class token: [N, C]"),
)
STAGE_NORMS = choices(
    ("hf", "as transformers' backbone returns"),
    ("none", "raw stage outputs"),
    ("final", "the checkpoint's final norm on the last stage"),
)
COMPRESSIONS = choices(("none", "no compression"), ("gzip", "smaller, slower"), ("lzf", "faster, larger"))
RESIZE_MODES = choices(
    ("crop", "the checkpoint's own resize and crop"),
    ("squash", "the whole image, aspect ratio not kept"),
    ("pad", "the whole image, fitted and padded with black"),
)
ON_ERROR = choices(("skip", "skip bad images and list them"), ("stop", "stop at the first bad image"))
SHOW_MODES = choices(("pca", "3 main components as RGB"), ("grid", "channels as grayscale tiles"))
ENGINES = choices(("local", "this process (or --devices)"), ("ray", "a Ray cluster's actors"))


def _expand(text: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~user with no such user
        return Path(text)


def _looks_like_path(text: str) -> bool:
    if text.startswith((".", "/", "~")):
        return True
    head, sep, _ = text.rpartition("/")
    return bool(sep) and _expand(head).is_dir()


def _folders(incomplete: str) -> Items:
    """Directories below the typed prefix (checkpoint folders and the way to them)."""
    head, sep, tail = incomplete.rpartition("/")
    base = _expand(head or "/") if sep else Path(".")
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    out = []
    for e in entries:
        if e.name.startswith(".") and not tail.startswith("."):
            continue
        if e.name.startswith(tail) and e.is_dir():
            hint = "checkpoint folder" if (e / "config.json").is_file() else "folder"
            out.append((f"{head}{sep}{e.name}" + ("" if hint == "checkpoint folder" else "/"), hint))
    return out


def complete_model(incomplete: str) -> Items:
    """``--model`` / MODEL: registry aliases (and aliased hub ids); folders when it looks like a path."""
    if _looks_like_path(incomplete):
        return _folders(incomplete)
    from bbx import registry

    names: list[tuple[str, str]] = []
    for row in registry.checkpoints():
        names.append((row.alias, row.description or row.repo_id))
        names += [(a, f"= {row.alias}") for a in row.extra_aliases]
        if incomplete:  # hub ids only once something is typed: they would crowd the alias list
            names.append((row.repo_id, f"= {row.alias}"))
    if incomplete.startswith("timm"):  # timm's architectures, once asked for: there are many
        for arch in registry.timm_architectures():
            found = registry.timm_arch(arch)
            names.append((f"timm:{arch}", f"= {found[1].repo_id}" if found else ""))
    seen: set[str] = set()
    unique = [(v, h) for v, h in names if not (v in seen or seen.add(v))]
    return _matching(unique, incomplete)


def stage_names_of_config(config: dict[str, Any], where: str = "config.json") -> list[str]:
    """A checkpoint's stage names from its ``config.json`` alone (no torch), through the format
    seam and the family's settings; [] when bbx cannot read the checkpoint."""
    from bbx.checkpoints import recognise
    from bbx.errors import BbxError

    try:
        return recognise(config, None, where).stage_names
    except BbxError:
        return []


def stage_names_of_model(name: str | None) -> list[str]:
    """The stages of MODEL as typed: an alias (embedded table) or a checkpoint folder (its
    config.json). Hub ids that are not aliases would need a download: nothing is offered."""
    if not name:
        return []
    from bbx import registry

    row = registry.lookup(name)
    if row is not None:
        return list(row.stage_names)
    if name.startswith("timm:"):
        from bbx.checkpoints import timm_default
        from bbx.errors import BbxError

        try:
            return stage_names_of_config(timm_default(name[len("timm:") :], name)[1])
        except BbxError:
            return []
    config = _expand(name) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return stage_names_of_config(data) if isinstance(data, dict) else []


def _list_items(names: list[str], incomplete: str) -> Items:
    """Complete the last item of a comma list (``stem,sta<TAB>``), offering only stages after the
    ones already chosen (selections must be in stage order)."""
    done, sep, last = incomplete.rpartition(",")
    prefix = done + sep
    chosen = [p.strip() for p in done.split(",") if p.strip()] if sep else []
    start = 0
    if chosen and all(c in names for c in chosen):
        start = max(names.index(c) for c in chosen) + 1
    return [(prefix + n, "") for n in names[start:] if n.startswith(last)]


def complete_out_features(ctx: typer.Context, incomplete: str) -> Items:
    """``--out-features``: the stage names of the model typed before it (``--model``, or the
    MODEL argument of ``bench``)."""
    return _list_items(stage_names_of_model(ctx.params.get("model") or _argument(ctx, "model")), incomplete)


def _typed_words() -> list[str]:
    """The command line typed so far, as the shell passed it to the completion call."""
    import shlex

    if "COMP_WORDS" in os.environ:  # bash
        line = os.environ["COMP_WORDS"]
    else:  # zsh, fish, powershell
        line = os.environ.get("_TYPER_COMPLETE_ARGS", "")
    try:
        return shlex.split(line)
    except ValueError:  # an unclosed quote
        return line.split()


def _argument(ctx: typer.Context, name: str) -> str | None:
    """A positional argument typed before the option being completed. The parser leaves it
    unset when that option still lacks its value (it stops at the error), so the typed words
    are searched too: the first word after the command that is neither an option nor its value."""
    value = ctx.params.get(name)
    if value:
        return str(value)
    words = _typed_words()
    if ctx.info_name in words:
        words = words[words.index(ctx.info_name) + 1 :]
    takes_value = {
        opt
        for p in ctx.command.params
        if p.param_type_name == "option" and not getattr(p, "is_flag", False)
        for opt in p.opts
    }
    skip = False
    for w in words:
        if skip:
            skip = False
        elif w.startswith("-"):
            skip = w in takes_value
        else:
            return w
    return None


def complete_stored_stage(ctx: typer.Context, incomplete: str) -> Items:
    """``bbx show FILE --stage``: the stages stored in FILE (read from its metadata)."""
    file = _argument(ctx, "file")
    if not file:
        return []
    try:
        from bbx.formats import open_output

        names = [s.name for s in open_output(_expand(file)).stages]
    except Exception:  # a completion must never fail loudly
        return []
    return [(n, "") for n in names if n.startswith(incomplete)]
