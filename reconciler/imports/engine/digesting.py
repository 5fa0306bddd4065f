"""A file's digest, computed while its bytes stream into COPY: no second read.

``imports.engine.importing`` wraps each opened file in ``Digesting`` before framing. The digest is
BLAKE2b (256 bits; ``hashlib`` releases the GIL on large blocks, so hashing overlaps the server's
parsing). ``checkpoints`` are byte counts at which the digest of the prefix read so far is kept
as well: the sizes of earlier versions imported from the same path, so that a file that merely
grew is recognised from the one read (``model.delivery.growth_refusal``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from reconciler.model.files import Readable

__all__ = ["Digesting", "digest_of"]


def _hasher() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=32)


def digest_of(data: bytes) -> bytes:
    """The digest of ``data`` as ``Digesting`` computes it (for tests and tools)."""
    hasher = _hasher()
    hasher.update(data)
    return hasher.digest()


class Digesting:
    """``reader``'s bytes, unchanged, hashed on the way through."""

    def __init__(self, reader: Readable, checkpoints: Iterable[int] = ()) -> None:
        self._reader = reader
        self._hasher = _hasher()
        self._pending = sorted({c for c in checkpoints if c > 0}, reverse=True)
        self.read_bytes = 0
        self.prefixes: dict[int, bytes] = {}  # checkpoint -> digest of the first that many bytes

    def read(self, n: int = -1, /) -> bytes:
        block = self._reader.read(n)
        view = memoryview(block)
        start = self.read_bytes
        while self._pending and self._pending[-1] <= start + len(view):
            point = self._pending.pop()
            self._hasher.update(view[: point - start])
            view = view[point - start :]
            start = point
            self.prefixes[point] = self._hasher.copy().digest()
        self._hasher.update(view)
        self.read_bytes += len(block)
        return block

    def digest(self) -> bytes:
        """The digest of every byte read so far."""
        return self._hasher.digest()
