"""COPY streaming: a CSV byte stream goes straight into ``COPY ... FROM STDIN``, block by block.

``imports.running`` calls ``inspect_target`` once per run (the table, its columns, the upsert key
and the privileges, checked before any byte is read) and ``load`` once per file, inside the file's
transaction. No CSV is parsed in Python and nothing is written to disk: the server parses, the
client only moves blocks, so memory stays flat whatever the file size. Identifiers are always
composed with ``psycopg.sql.Identifier`` and option values with ``sql.Literal``, never pasted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from psycopg import sql

from reconciler.errors import TargetError

if TYPE_CHECKING:
    import psycopg

    from reconciler.model.specs import CsvDialect, Target

__all__ = [
    "BLOCK_SIZE",
    "CopyFailure",
    "Readable",
    "TargetTable",
    "copy_failure",
    "copy_statement",
    "inspect_target",
    "load",
]

# psycopg hands blocks of up to 128 KiB to libpq as they are and slices bigger ones (a copy), so
# this is the largest block that costs no extra copy; benchmarks/bench_import.py measured 64 KiB to
# 1 MiB within noise of each other.
BLOCK_SIZE = 128 * 1024
_STAGE = "_reconcile_stage"
_STAGE_ORDER = "_reconcile_line"
_LINE = re.compile(r"\bline (\d+)")
_COLUMN = re.compile(r"\bcolumn ([^:,]+)")
_PRIVILEGES = {
    "append": ("INSERT",),
    "replace": ("INSERT", "DELETE"),
    "upsert": ("INSERT", "UPDATE"),
}


class Readable(Protocol):
    """What a source hands over: a binary stream read in blocks."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TargetTable:
    """A checked target: the table, the columns loaded, and what the run's mode needs."""

    table: str
    columns: tuple[str, ...]
    mode: str
    key: tuple[str, ...] = ()
    dialect: CsvDialect | None = None

    @property
    def identifier(self) -> sql.Composable:
        return sql.Identifier(*self.table.split("."))


@dataclass(frozen=True, slots=True)
class CopyFailure:
    """PostgreSQL's account of a rejected file: its message and, for data errors, where."""

    message: str
    line: int | None = None
    column: str | None = None


def copy_statement(
    table: sql.Composable, columns: tuple[str, ...], dialect: CsvDialect
) -> sql.Composed:
    """``COPY table (columns) FROM STDIN WITH (FORMAT csv, ...)`` for ``dialect``."""
    options: list[sql.Composable] = [
        sql.SQL("FORMAT csv"),
        sql.SQL("HEADER {}").format(sql.SQL("true" if dialect.header else "false")),
        sql.SQL("DELIMITER {}").format(sql.Literal(dialect.delimiter)),
        sql.SQL("QUOTE {}").format(sql.Literal(dialect.quote)),
        sql.SQL("ESCAPE {}").format(sql.Literal(dialect.escape or dialect.quote)),
        sql.SQL("NULL {}").format(sql.Literal(dialect.null)),
        sql.SQL("ENCODING {}").format(sql.Literal(dialect.encoding)),
    ]
    return sql.SQL("COPY {} ({}) FROM STDIN WITH ({})").format(
        table,
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(options),
    )


def inspect_target(
    conn: psycopg.Connection[Any], target: Target, dialect: CsvDialect
) -> TargetTable:
    """Check table, columns, upsert key, encoding and privileges; ``TargetError`` if unusable."""
    with conn.transaction():  # read-only; a savepoint if the caller has a transaction open
        return _inspect(conn, target, dialect)


def _inspect(conn: psycopg.Connection[Any], target: Target, dialect: CsvDialect) -> TargetTable:
    name = sql.Identifier(*target.table.split(".")).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()
    if row is None or row[0] is None:
        raise TargetError(f"table {target.table} does not exist in the target database")
    oid = row[0]
    found = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            (oid,),
        )
    ]
    columns = tuple(target.columns or found)
    missing = [c for c in columns if c not in found]
    if missing:
        raise TargetError(
            f"table {target.table} has no column {', '.join(missing)} "
            f"(its columns: {', '.join(found)})"
        )
    key = tuple(target.key or ())
    if target.mode == "upsert":
        _check_key(conn, oid, target.table, key, columns)
    for privilege in _PRIVILEGES[target.mode]:
        allowed = conn.execute("SELECT has_table_privilege(%s, %s)", (oid, privilege)).fetchone()
        if not (allowed and allowed[0]):
            raise TargetError(
                f"the target database user may not {privilege} into {target.table}, "
                f"which mode {target.mode!r} needs"
            )
    encoding = conn.execute("SELECT pg_char_to_encoding(%s)", (dialect.encoding,)).fetchone()
    if not encoding or encoding[0] < 0:
        raise TargetError(f"csv.encoding {dialect.encoding!r} is not an encoding PostgreSQL knows")
    return TargetTable(target.table, columns, target.mode, key, dialect)


def _check_key(
    conn: psycopg.Connection[Any],
    oid: int,
    table: str,
    key: tuple[str, ...],
    columns: tuple[str, ...],
) -> None:
    absent = [k for k in key if k not in columns]
    if absent:
        raise TargetError(f"upsert key {', '.join(absent)} is not among the loaded columns")
    # ON CONFLICT (key) needs a non-partial, non-expression, immediate unique index on exactly
    # these columns; checking first gives a clear message before a large file is streamed.
    unique = conn.execute(
        "SELECT 1 FROM pg_index i WHERE i.indrelid = %s AND i.indisunique AND i.indimmediate "
        "AND i.indpred IS NULL AND i.indexprs IS NULL AND ("
        "  SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a"
        "  WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        ") = %s::text[] AND i.indnkeyatts = %s",
        (oid, sorted(key), len(key)),
    ).fetchone()
    if unique is None:
        listed = ", ".join(key)
        raise TargetError(
            f"upsert key ({listed}) of {table} has no unique constraint; add one with "
            f"ALTER TABLE {table} ADD UNIQUE ({listed})"
        )


def load(
    conn: psycopg.Connection[Any],
    target: TargetTable,
    reader: Readable,
    *,
    block_size: int = BLOCK_SIZE,
    on_block: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Stream ``reader`` into the target inside the caller's transaction; ``(rows, bytes)``.

    ``on_block(bytes, newlines)`` is called per block (newlines approximate rows for progress).
    """
    assert target.dialect is not None
    if target.mode != "upsert":
        return _stream(
            conn, target.identifier, target, reader, block_size=block_size, on_block=on_block
        )
    # COPY lands in a session-private stage; the merge is one INSERT ... ON CONFLICT. The stage
    # is built from the loaded columns only (not LIKE the table) so NOT NULL columns that the
    # file does not carry cannot reject rows that the target would have filled with defaults.
    stage = sql.Identifier(_STAGE)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in target.columns)
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            stage, cols, target.identifier
        )
    )
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN {} bigint GENERATED ALWAYS AS IDENTITY").format(
            stage, sql.Identifier(_STAGE_ORDER)
        )
    )
    rows, nbytes = _stream(conn, stage, target, reader, block_size=block_size, on_block=on_block)
    conn.execute(_merge(target, stage, cols))
    conn.execute(sql.SQL("DROP TABLE {}").format(stage))
    return rows, nbytes


def _merge(target: TargetTable, stage: sql.Identifier, cols: sql.Composable) -> sql.Composed:
    key = sql.SQL(", ").join(sql.Identifier(k) for k in target.key)
    others = [c for c in target.columns if c not in target.key]
    action = (
        sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                for c in others
            )
        )
        if others
        else sql.SQL("DO NOTHING")
    )
    # A key repeated within one file would make ON CONFLICT touch a row twice (an error); the
    # last occurrence in the file wins, as if the rows had been applied in order.
    return sql.SQL(
        "INSERT INTO {} ({}) SELECT DISTINCT ON ({}) {} FROM {} ORDER BY {}, {} DESC "
        "ON CONFLICT ({}) {}"
    ).format(
        target.identifier, cols, key, cols, stage, key, sql.Identifier(_STAGE_ORDER), key, action
    )


def _stream(
    conn: psycopg.Connection[Any],
    table: sql.Composable,
    target: TargetTable,
    reader: Readable,
    *,
    block_size: int,
    on_block: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    assert target.dialect is not None
    statement = copy_statement(table, target.columns, target.dialect)
    nbytes = 0
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            while block := reader.read(block_size):
                copy.write(block)
                nbytes += len(block)
                if on_block is not None:
                    on_block(len(block), block.count(b"\n"))
        return cur.rowcount, nbytes


def copy_failure(exc: psycopg.Error) -> CopyFailure:
    """The message, CSV line and column of a failed COPY, from PostgreSQL's diagnostics."""
    diag = exc.diag
    message = (diag.message_primary or str(exc)).strip()
    context = diag.context or ""
    line = _LINE.search(context)
    column = _COLUMN.search(context)
    return CopyFailure(
        message=message,
        line=int(line.group(1)) if line else None,
        column=column.group(1).strip() if column else None,
    )
