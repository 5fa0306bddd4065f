"""``reconcile sql``: run SQL against the management database, embedded default included.

With the embedded server there is no long-running PostgreSQL to point ``psql`` at; this command
is how a user creates the quickstart's target table or looks at imported rows.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.commands.arguments import SqlArguments
from reconciler.commands.output import emit_json
from reconciler.errors import EXIT_OK, UsageError
from reconciler.settings import Settings

if TYPE_CHECKING:
    import psycopg

__all__ = ["sql"]


def _statements(arguments: SqlArguments) -> str:
    command, file = arguments.statements, arguments.file
    if (command is None) == (file is None):
        raise UsageError("give exactly one of -c SQL and -f FILE")
    if command is not None:
        return command
    assert file is not None
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from exc


@dataclass(frozen=True, slots=True)
class _Result:
    """One statement's result: its command tag, and its columns and rows if it returns rows."""

    command: str
    columns: tuple[str, ...] | None
    rows: tuple[tuple[Any, ...], ...]
    rowcount: int

    def document(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "columns": list(self.columns) if self.columns is not None else None,
            "rows": _records(self.columns or (), self.rows),
            "rowcount": self.rowcount,
        }


def _records(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _results(cursor: psycopg.Cursor[Any]) -> list[_Result]:
    """Every statement's result, in order (psycopg keeps one result set per statement)."""
    results = []
    while True:
        columns = tuple(c.name for c in cursor.description) if cursor.description else None
        results.append(
            _Result(
                command=cursor.statusmessage or "",
                columns=columns,
                rows=tuple(cursor.fetchall()) if columns is not None else (),
                rowcount=cursor.rowcount,
            )
        )
        if not cursor.nextset():
            return results


def sql(arguments: SqlArguments, settings: Settings) -> int:
    """Run the statements in one transaction; print the rows of each that returns rows.

    As ``psql -c`` does, text output shows every result that has columns (a header line, then
    tab-separated rows), a blank line between results. The JSON document lists every result in
    ``results``; its ``columns`` and ``rows`` are the last row-returning result's, as before.
    """
    from reconciler.store.connecting import open_store

    text = _statements(arguments)
    with open_store(settings) as conn, conn.transaction():
        results = _results(conn.execute(text.encode()))  # no parameters: simple protocol
    tables = [r for r in results if r.columns is not None]
    if settings.output == "json":
        last = tables[-1] if tables else None
        emit_json(
            "QueryResult",
            {
                "columns": list(last.columns or ()) if last else [],
                "rows": _records(last.columns or (), last.rows) if last else [],
                "results": [r.document() for r in results],
            },
        )
        return EXIT_OK
    blocks = []
    for table in tables:
        lines = ["\t".join(table.columns or ())]
        lines += ["\t".join("" if v is None else str(v) for v in row) for row in table.rows]
        blocks.append("".join(line + "\n" for line in lines))
    sys.stdout.write("\n".join(blocks))
    return EXIT_OK
