"""Content hashes of files: checkpoints, prepared image folders and exported weights record them."""

from __future__ import annotations

import hashlib


def sha256_file(path: str) -> str:
    """The SHA-256 hex digest of the file at `path`, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
