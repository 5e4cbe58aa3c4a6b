"""``bbx download MODEL``: fill the Hugging Face cache ahead of time, for offline use."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from bbx.cli import _complete
from bbx.cli._app import command, emit_json
from bbx.errors import UsageError
from bbx.report import human_bytes


@command("download")
def download(
    model: str = typer.Argument(
        ..., help="Hub id org/name, or an alias (see `bbx models`).", autocompletion=_complete.complete_model
    ),
    revision: Optional[str] = typer.Option(  # noqa: UP045
        None, "--revision", metavar="REV", help="Hub branch, tag or commit sha (default: main)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was fetched as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars and no summary (errors still print)."),
) -> None:
    """Fetch a model's files into the Hugging Face cache, so that later commands work offline.

    Only what bbx needs is fetched: config.json, preprocessor_config.json and the weights
    (safetensors, or their shards; pytorch_model.bin only when there is no safetensors). Files
    already in the cache are not transferred again. The cache is huggingface_hub's (HF_HOME,
    HF_HUB_CACHE); HF_TOKEN is used for gated and private repos. Afterwards, with HF_HUB_OFFLINE=1,
    `bbx inspect` and the Python API use the cached copy without any network.

    Example: bbx download microsoft/resnet-50 --revision main
    """
    from bbx import hub

    if hub.expand(model).is_dir():
        raise UsageError(f"{model} is a local checkpoint folder: there is nothing to download")
    ref = hub.resolve(model, revision=revision, weights=True, progress=False if quiet else None, downloading=True)
    snap = ref.snapshot
    assert snap is not None  # every hub checkpoint resolves with one; folders are refused above
    if as_json:
        emit_json(
            {
                "model": model,
                "repo_id": ref.repo_id,
                "revision": snap.revision,
                "commit": snap.commit,
                "folder": str(snap.folder),
                "source": snap.source,
                "note": snap.note or None,
                "files": [{"name": f.name, "size": f.size, "cached": f.cached} for f in snap.files],
                "bytes": snap.size,
                "bytes_downloaded": snap.downloaded,
            }
        )
        return
    if quiet:
        return
    err = sys.stderr
    err.write(f"{ref.repo_id} @ {snap.commit} (revision {snap.revision})\n")
    width = max(len(f.name) for f in snap.files)
    for f in snap.files:
        state = "already cached" if f.cached else "downloaded"
        err.write(f"  {f.name:<{width}}  {human_bytes(f.size):>9}  {state}\n")
    fetched = sum(not f.cached for f in snap.files)
    err.write(
        f"{len(snap.files)} files, {human_bytes(snap.size)}; {fetched} downloaded ({human_bytes(snap.downloaded)}) "
        f"into {snap.folder}\n"
    )
    if snap.note:
        err.write(f"note: {snap.note}\n")
    err.flush()
