"""A file's digest, computed while its bytes stream into COPY: no second read.

``imports.engine.importing`` wraps each opened file in ``Digesting`` before framing. The digest is
XXH3-128 (``xxhash``): at some 40 GB/s it costs well under 1 % of an import, where BLAKE2b cost 5 %
(``benchmarks/bench_import.py`` prints both sides). It identifies content, not trust: a sender
able to craft a collision controls what it sends anyway, and 128 bits make an accidental one
negligible. ``checkpoints`` are byte counts at which the digest of the prefix read so far is kept
as well: the sizes of earlier versions imported from the same path, so that a file that merely
grew is recognised from the one read (``model.delivery.growth_refusal``).
"""

from __future__ import annotations

from collections.abc import Iterable

import xxhash

from reconciler.model.files import Readable

__all__ = ["Digesting", "digest_of"]


def _hasher() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


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
