"""Fetching checkpoint files from the Hugging Face Hub into its standard cache.

Only what bbx needs is fetched: ``config.json``, ``preprocessor_config.json`` and the weights
(``model.safetensors``, or the shards named by ``model.safetensors.index.json``; a checkpoint
without safetensors falls back to ``pytorch_model.bin``, read later with ``weights_only=True``).
The cache layout, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` are
huggingface_hub's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Snapshot:
    folder: Path
    commit: str


def fetch(repo_id: str, *, revision: str | None = None, weights: bool = True) -> Snapshot:
    from huggingface_hub import hf_hub_download

    config = Path(hf_hub_download(repo_id, "config.json", revision=revision))
    folder = config.parent
    commit = folder.name
    if weights:
        hf_hub_download(repo_id, "model.safetensors", revision=commit)
    return Snapshot(folder=folder, commit=commit)
