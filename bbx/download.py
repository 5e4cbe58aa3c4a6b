"""Fetching checkpoint files from the Hugging Face Hub into its standard cache.

Only what bbx needs is fetched: ``config.json``, ``preprocessor_config.json`` (when the repo has
one) and the weights, chosen from the repo's file listing at the revision, in this order:
``model.safetensors``; else ``model.safetensors.index.json`` and the shards it names; else
``pytorch_model.bin`` (or its index and shards), which :mod:`bbx.weights` reads with
``torch.load(..., weights_only=True)``. Never the whole repo, never other frameworks' files.

The cache is huggingface_hub's own (``HF_HOME``, ``HF_HUB_CACHE``), and so are ``HF_ENDPOINT``,
``HF_TOKEN`` and ``HF_HUB_OFFLINE``. How a request goes:

* ``HF_HUB_OFFLINE=1``: no request at all; the files come from the cache (the branch or tag is
  looked up in the cache's ``refs/``) or the call fails with :class:`OfflineError`.
* ``revision`` is a full commit sha whose files are all cached: no request either.
* otherwise one metadata request (the file listing and commit at the revision, waiting at most
  ``HF_HUB_ETAG_TIMEOUT`` seconds, default 10), then the files, each fetched once: a cached file is
  never transferred again. When the hub cannot be reached, a complete cached copy of the revision
  is used; without one the call fails with :class:`NetworkError`.

Every huggingface_hub and transport exception is turned into a bbx error here, in
:func:`_hub_errors`, and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbx.errors import (
    BbxError,
    GatedRepoError,
    InputError,
    ModelError,
    NetworkError,
    OfflineError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UsageError,
    first_line,
)

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
#: (single file, shard index) pairs, in order of preference (the hub download and bbx.weights)
WEIGHT_CHOICES: tuple[tuple[str, str], ...] = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)
DEFAULT_REVISION = "main"

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO_PART = re.compile(r"[A-Za-z0-9_.-]{1,96}")
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+/-]{0,254}")


@dataclass(frozen=True)
class FetchedFile:
    name: str
    size: int
    cached: bool  # already in the cache before this call: nothing was transferred


@dataclass(frozen=True)
class Snapshot:
    """The local folder holding one commit's files (a snapshot folder of the hub cache)."""

    folder: Path
    commit: str
    repo_id: str = ""
    revision: str = DEFAULT_REVISION  # as asked for
    files: tuple[FetchedFile, ...] = ()
    #: "hub": checked against the hub; "cache": taken from the cache without asking the hub
    #: (offline mode, a pinned commit already cached, or the hub unreachable -- see ``note``)
    source: str = "hub"
    note: str = ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def downloaded(self) -> int:
        return sum(f.size for f in self.files if not f.cached)


# ---------------------------------------------------------------------------------------------
# validation: before any request


def validate_repo_id(repo_id: str) -> None:
    """``org/name`` with the hub's rules, or ModelError (exit 4): MODEL names no model bbx can fetch."""
    parts = repo_id.split("/")
    ok = (
        len(parts) == 2
        and all(_REPO_PART.fullmatch(p) for p in parts)
        and not any(p[0] in "-." or p[-1] in "-." for p in parts)
        and "--" not in repo_id
        and ".." not in repo_id
        and not repo_id.endswith(".git")
    )
    if not ok:
        raise ModelError(
            f"{repo_id!r} is not a valid hub repo id: expected org/name, each part 1-96 letters, digits, "
            "'-', '_' or '.', not starting or ending with '-' or '.', without '--' or '..'"
        )


def validate_revision(revision: str) -> None:
    """A branch, tag or commit name git would accept (restricted to safe ASCII), or UsageError."""
    ok = (
        _REVISION.fullmatch(revision) is not None
        and ".." not in revision
        and "//" not in revision
        and "/." not in revision
        and not revision.endswith(("/", ".", ".lock"))
    )
    if not ok:
        raise UsageError(
            f"--revision {revision!r} is not a valid branch, tag or commit: use letters, digits, '.', '_', '-', "
            "'+' and '/', without spaces, '..' or '//'"
        )


# ---------------------------------------------------------------------------------------------
# the one place where huggingface_hub's and the transport's exceptions become bbx errors


class _Unreachable(Exception):
    """The hub did not answer (connection refused, timeout, 5xx): the cache may still help."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _network_reason(e: BaseException, timeout_var: str = "HF_HUB_ETAG_TIMEOUT") -> str | None:
    """Why the hub could not be reached, if ``e`` (or what caused it) is a transport failure of
    requests, httpx or httpx2 (recognised by class name, whichever huggingface_hub uses)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        names = {c.__name__ for c in type(e).__mro__}
        if any("Timeout" in n for n in names):
            return f"no answer within {_timeout(timeout_var):g} s ({timeout_var})"
        if names & {"ConnectError", "ConnectionError", "NetworkError", "RemoteProtocolError", "ProxyError"}:
            return f"connection failed ({first_line(e)})"
        e = e.__cause__  # type: ignore[assignment]
    return None


def _token_sent(e: Any) -> bool:
    """Whether the failed request carried a token (else: whether one is configured)."""
    try:
        headers = e.response.request.headers
    except Exception:  # no response, or a response without its request
        from huggingface_hub import get_token

        return get_token() is not None
    return headers.get("authorization") is not None


def _translate(e: BaseException, repo_id: str, revision: str, timeout_var: str) -> BaseException | None:
    """The bbx error (or :class:`_Unreachable`) for an exception raised while talking to the hub;
    None for an exception that is not about the hub (a bug, left alone)."""
    from huggingface_hub import errors as hfe

    remote_missing = getattr(hfe, "RemoteEntryNotFoundError", hfe.EntryNotFoundError)
    if isinstance(e, hfe.GatedRepoError):
        if _token_sent(e):
            return GatedRepoError(
                f"{repo_id} is a gated repository and your token has no access to it: accept its terms on the hub"
            )
        return GatedRepoError(
            f"{repo_id} is a gated repository: accept its terms on the hub, then set HF_TOKEN (or run `hf auth login`)"
        )
    if isinstance(e, hfe.RepositoryNotFoundError):
        hint = "" if _token_sent(e) else "; if it is private, set HF_TOKEN (or run `hf auth login`)"
        return RepoNotFoundError(f"hub repository {repo_id} not found at {_endpoint()}{hint}")
    if isinstance(e, hfe.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"revision {revision!r} not found in {repo_id} (give a branch, a tag or a full commit sha)"
        )
    if isinstance(e, hfe.LocalEntryNotFoundError):
        # hf_hub_download found neither the hub nor a cached file; what went wrong is its cause
        cause = e.__cause__
        found = _translate(cause, repo_id, revision, timeout_var) if cause is not None else None
        return found or _Unreachable(_network_reason(e, timeout_var) or "the hub could not be reached")
    if isinstance(e, remote_missing):
        return ModelError(f"{repo_id} (revision {revision}): the hub lists a file it cannot serve ({first_line(e)})")
    if isinstance(e, hfe.OfflineModeIsEnabled):
        return OfflineError(f"offline (HF_HUB_OFFLINE is set) and {repo_id} (revision {revision}) is not in the cache")
    if isinstance(e, hfe.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            return GatedRepoError(f"the hub refused access to {repo_id} (HTTP {status}): check HF_TOKEN")
        return _Unreachable(f"the hub answered HTTP {status}")
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
        return InputError(f"cannot write to the hub cache {cache_dir()}: {e.strerror or e}")
    reason = _network_reason(e, timeout_var)
    return _Unreachable(reason) if reason is not None else None


@contextlib.contextmanager
def _hub_errors(repo_id: str, revision: str, *, transfer: bool = False) -> Iterator[None]:
    """Turns what talking to the hub raises into bbx errors; ``transfer``: file downloads (whose
    reads wait ``HF_HUB_DOWNLOAD_TIMEOUT``) rather than metadata requests."""
    try:
        yield
    except (BbxError, _Unreachable):
        raise
    except Exception as e:
        timeout_var = "HF_HUB_DOWNLOAD_TIMEOUT" if transfer else "HF_HUB_ETAG_TIMEOUT"
        translated = _translate(e, repo_id, revision, timeout_var)
        if translated is None:
            raise
        raise translated from e


# ---------------------------------------------------------------------------------------------
# settings read from huggingface_hub


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _timeout(var: str) -> float:
    from huggingface_hub import constants

    return float(getattr(constants, var))


def hub_timeout() -> float:
    """Seconds bbx waits for the hub's first answer: ``HF_HUB_ETAG_TIMEOUT`` (default 10)."""
    return _timeout("HF_HUB_ETAG_TIMEOUT")


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    from huggingface_hub import constants

    probe = getattr(constants, "is_offline_mode", None)
    return bool(probe() if callable(probe) else constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    """huggingface_hub's retry warnings would break the one-line error rule: keep its logger at
    ERROR while bbx talks to the hub, unless the user chose a verbosity (``HF_HUB_VERBOSITY``)."""
    if os.environ.get("HF_HUB_VERBOSITY"):
        yield
        return
    logger = logging.getLogger("huggingface_hub")
    before = logger.level
    logger.setLevel(max(before, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(before)


@functools.lru_cache(maxsize=1)
def _silent_bar() -> type:
    from huggingface_hub.utils import tqdm as hub_tqdm

    class SilentBar(hub_tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentBar


# ---------------------------------------------------------------------------------------------
# choosing the weight files


def shard_names(index_file: Path, label: str) -> list[str]:
    """The shard files a ``*.index.json`` names: plain file names in its folder, never a path."""
    try:
        names = sorted(set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"{label}: {index_file.name} is not a valid shard index ({e})") from None
    bad = [n for n in names if not isinstance(n, str) or not n or "/" in n or "\\" in n or n in (".", "..")]
    if bad or not names:
        raise ModelError(f"{label}: {index_file.name} names no shard files or invalid ones: {bad[:3]}")
    return names


def _missing_weights(label: str) -> ModelError:
    names = ", ".join(n for pair in WEIGHT_CHOICES for n in pair)
    return ModelError(f"{label} has no weights bbx can load: expected one of {names}")


def cached_weights(folder: Path, label: str = "") -> list[str] | None:
    """The weight files (names) a snapshot folder holds completely, in bbx's order; None if none."""
    for single, index in WEIGHT_CHOICES:
        if (folder / single).is_file():
            return [single]
        if (folder / index).is_file():
            shards = shard_names(folder / index, label or str(folder))
            if all((folder / s).is_file() for s in shards):
                return [index, *shards]
            return None
    return None


# ---------------------------------------------------------------------------------------------
# fetching


def fetch(
    repo_id: str,
    *,
    revision: str | None = None,
    weights: bool = True,
    progress: bool | None = None,
    check: Callable[[Path], object] | None = None,
    downloading: bool = False,
    random_ok: bool = False,
) -> Snapshot:
    """Make ``repo_id``'s files local at ``revision`` (branch, tag or commit; default ``main``):
    config, preprocessing and, with ``weights``, the weights. ``check(folder)`` runs once the
    configs are local and before any weights are fetched (to refuse an unsupported model early).
    ``progress``: download bars on stderr (default: when stderr is a terminal). Errors advise
    what helps: ``downloading`` (for ``bbx download`` itself, which only the network can help),
    ``random_ok`` (the model's config is embedded: ``--no-pretrained`` runs it without weights)."""
    validate_repo_id(repo_id)
    if revision is not None:
        validate_revision(revision)
    rev = revision or DEFAULT_REVISION
    pinned = _COMMIT.fullmatch(rev) is not None
    with _quiet_hub_logs():
        if is_offline():
            snap = _offline(repo_id, rev, weights=weights, downloading=downloading, random_ok=random_ok)
        elif (snap := _from_cache(repo_id, rev, weights=weights) if pinned else None) is None:
            try:
                return _online(repo_id, rev, weights=weights, progress=progress, check=check)
            except _Unreachable as e:
                # a pinned commit was just looked up in the cache: no second lookup for it
                snap = None if pinned else _from_cache(repo_id, rev, weights=weights)
                if snap is None:
                    what = f"{repo_id} (revision {rev})"
                    if downloading:
                        advice = "check the network (or HF_ENDPOINT) and rerun"
                    else:
                        advice = (
                            f"check the network (or HF_ENDPOINT), run `{_download_hint(repo_id, revision)}` while "
                            f"online, or pass a checkpoint folder{_random_hint(random_ok)}"
                        )
                    raise NetworkError(
                        f"cannot reach the hub at {_endpoint()}: {e.reason}, and {what} is not in the cache; {advice}"
                    ) from e
                snap = dataclasses.replace(snap, note=f"hub unreachable ({e.reason}): used the cached copy")
    if check is not None:
        check(snap.folder)
    return snap


def _download_hint(repo_id: str, revision: str | None) -> str:
    return f"bbx download {repo_id}" + (f" --revision {revision}" if revision else "")


def _from_cache(repo_id: str, revision: str, *, weights: bool) -> Snapshot | None:
    """A complete cached copy of ``repo_id`` at ``revision`` (the cache's refs name branches and
    tags), without any request; None when something is missing."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, CONFIG, revision=revision)
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    names = [CONFIG] + ([PREPROCESSOR] if (folder / PREPROCESSOR).is_file() else [])
    if weights:
        chosen = cached_weights(folder, f"{repo_id}@{folder.name[:12]}")
        if chosen is None:
            return None
        names += chosen
    files = tuple(FetchedFile(n, (folder / n).stat().st_size, True) for n in names)
    return Snapshot(folder, folder.name, repo_id, revision, files, source="cache")


def _random_hint(random_ok: bool) -> str:
    return ", or --no-pretrained to run it on random weights (nothing to download)" if random_ok else ""


def _offline(repo_id: str, revision: str, *, weights: bool, downloading: bool, random_ok: bool) -> Snapshot:
    snap = _from_cache(repo_id, revision, weights=weights)
    if snap is None:
        if downloading:
            hint = "downloading needs the network: unset HF_HUB_OFFLINE and rerun"
        else:
            rev = None if revision == DEFAULT_REVISION else revision
            hint = f"run `{_download_hint(repo_id, rev)}` while online"
        partial = _from_cache(repo_id, revision, weights=False) if weights else None
        if partial is not None:
            raise OfflineError(
                f"offline (HF_HUB_OFFLINE is set) and the weights of {repo_id} at {partial.commit} are not in "
                f"the cache: {hint}{'' if downloading else _random_hint(random_ok)}"
            )
        folder = "" if downloading else f", or pass a checkpoint folder{_random_hint(random_ok)}"
        raise OfflineError(
            f"offline (HF_HUB_OFFLINE is set) and {repo_id} (revision {revision}) is not in the cache at "
            f"{cache_dir()}: {hint}{folder}"
        )
    return snap


def _online(
    repo_id: str,
    revision: str,
    *,
    weights: bool,
    progress: bool | None,
    check: Callable[[Path], object] | None,
) -> Snapshot:
    from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache

    if progress is None:
        progress = sys.stderr.isatty()
    bar = None if progress else _silent_bar()
    api = HfApi()

    def listing(rev: str) -> tuple[str, set[str]]:
        with _hub_errors(repo_id, revision):
            info = api.model_info(repo_id, revision=rev, timeout=hub_timeout())
        if not info.sha or not _COMMIT.fullmatch(info.sha):
            raise _Unreachable(f"the hub's answer for {repo_id} has no commit sha")
        return info.sha, {s.rfilename for s in info.siblings or []}

    commit, names = listing(revision)
    label = f"{repo_id}@{commit[:12]}"
    if CONFIG not in names:
        raise ModelError(f"{repo_id} (revision {revision}) has no {CONFIG}: not a checkpoint bbx can read")

    fetched: list[FetchedFile] = []

    def get(name: str, rev: str) -> Path:
        was_cached = isinstance(try_to_load_from_cache(repo_id, name, revision=commit), str)
        with _hub_errors(repo_id, revision, transfer=True):
            path = Path(hf_hub_download(repo_id, name, revision=rev, tqdm_class=bar))
        fetched.append(FetchedFile(name, path.stat().st_size, was_cached))
        return path

    # config.json at the revision as asked, so that huggingface_hub records in the cache which
    # commit a branch or tag names (what offline runs read); everything else at that commit.
    folder = get(CONFIG, revision).parent
    if folder.name != commit:  # the branch moved between the two requests: follow it
        commit, names = listing(folder.name)
        label = f"{repo_id}@{commit[:12]}"
    if PREPROCESSOR in names:
        get(PREPROCESSOR, commit)
    if check is not None:
        check(folder)
    if weights:
        for single, index in WEIGHT_CHOICES:
            if single in names:
                get(single, commit)
                break
            if index in names:
                shards = shard_names(get(index, commit), label)
                absent = [s for s in shards if s not in names]
                if absent:
                    raise ModelError(f"{label}: {index} names shard files the repo does not have: {absent[:3]}")
                for shard in shards:
                    get(shard, commit)
                break
        else:
            raise _missing_weights(f"{repo_id} (revision {revision}, commit {commit[:12]})")
    return Snapshot(folder, commit, repo_id, revision, tuple(fetched), source="hub")
