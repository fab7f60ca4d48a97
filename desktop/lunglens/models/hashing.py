"""SHA-256 of model files and other artifacts: the one implementation the app and training share.

The registry refuses a model whose ``model.onnx`` differs from its manifest's hash, the training
pipeline records the hashes it writes, and the pretrained-weights loader checks its files: all
of them hash through these two functions so a digest is computed one way everywhere.
"""

from __future__ import annotations

import hashlib
import os

#: Read size for :func:`sha256_of`: large enough for a fast hash, small enough that a big
#: ONNX or weights file never sits in memory twice.
CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (bytes already in memory, e.g. the ONNX the engine will load)."""
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
