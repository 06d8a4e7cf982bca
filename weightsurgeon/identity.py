"""Which exact weights a checkpoint is, where that costs nothing to know.

The header digest (`Checkpoint.header_digest`) names a *layout*: a base and its fine-tune
share it. The weights themselves are named by the Hub: a repository, a commit, and each
shard's LFS sha256. A model read from the Hub gets them from the file list; a model in the
local Hugging Face cache carries them in its path (``models--ORG--NAME/snapshots/COMMIT``)
and in the blob each shard links to (the blob's file name is the sha256). A plain folder
has none of them, and none is computed: hashing every byte is what this avoids.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from weightsurgeon.checkpoint import Checkpoint

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def layout_digest(ckpt: Checkpoint) -> str:
    """sha256 over the shards' header digests: the same for any two checkpoints with the same tensor layout."""
    h = hashlib.sha256()
    for shard in ckpt.shards:
        h.update(ckpt.header_digest(shard).encode())
    return h.hexdigest()


def _cache_repo(root: Path | None) -> tuple[str | None, str | None]:
    """(ORG/NAME, commit) of a snapshot folder of the Hugging Face cache, else (None, None)."""
    if root is None:
        return None, None
    parts = Path(os.path.abspath(root)).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--") and _COMMIT.match(parts[-1]):
        return parts[-3][len("models--"):].replace("--", "/"), parts[-1]
    return None, None


def _blob_sha256(path: Path) -> str | None:
    """The sha256 a cache snapshot's symlink names (its blob's file name), without reading the file."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    name = Path(target).name
    return name if _SHA256.match(name) else None


def hub_identity(ckpt: Checkpoint) -> dict:
    """{repo, commit, shards: [{file, sha256}]}: None where unknown (a plain folder)."""
    if ckpt.remote is not None:
        repo = ckpt.remote
        return {"repo": repo.repo_id, "commit": repo.commit,
                "shards": [{"file": s.path.name, "sha256": (repo.files.get(s.path.name) or _NoFile).sha256}
                           for s in ckpt.shards]}
    repo_id, commit = _cache_repo(ckpt.root)
    return {"repo": repo_id, "commit": commit,
            "shards": [{"file": s.path.name, "sha256": _blob_sha256(s.path) if commit else None} for s in ckpt.shards]}


class _NoFile:
    sha256 = None
