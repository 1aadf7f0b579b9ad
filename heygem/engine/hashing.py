"""SHA-256 of a file, read in chunks: weights are hundreds of MB and face videos can be large.

Kept free of torch so that the face-box cache and the weights checks can share it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_CHUNK_BYTES = 1 << 20


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes; OSError (e.g. FileNotFoundError) when it cannot be read."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
