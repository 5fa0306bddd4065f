"""``reconcile sql``: run SQL against the management database, embedded default included.

With the embedded server there is no long-running PostgreSQL to point ``psql`` at; this command
is how a user creates the quickstart's target table or looks at imported rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reconciler.commands.output import emit_json
from reconciler.errors import EXIT_OK, UsageError
from reconciler.settings import Settings

__all__ = ["sql"]


def _statements(args: argparse.Namespace) -> str:
    command: str | None = getattr(args, "command_text", None)
    file: str | None = getattr(args, "file", None)
    if (command is None) == (file is None):
        raise UsageError("give exactly one of -c SQL and -f FILE")
    if command is not None:
        return command
    assert file is not None
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from exc


def sql(args: argparse.Namespace, settings: Settings) -> int:
    """Run the statements in one transaction; print the rows of the last one, if any."""
    from reconciler.store.connecting import open_store

    text = _statements(args)
    with open_store(settings) as conn, conn.transaction():
        cursor = conn.execute(text.encode())  # several statements: no parameters, simple protocol
        columns = [c.name for c in cursor.description] if cursor.description else []
        rows = cursor.fetchall() if columns else []
    if settings.output == "json":
        emit_json(
            "QueryResult",
            {"columns": columns, "rows": [dict(zip(columns, r, strict=True)) for r in rows]},
        )
    elif columns:
        sys.stdout.write("\t".join(columns) + "\n")
        for row in rows:
            sys.stdout.write("\t".join("" if v is None else str(v) for v in row) + "\n")
    return EXIT_OK
