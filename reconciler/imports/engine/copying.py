"""COPY streaming: a CSV byte stream goes straight into ``COPY ... FROM STDIN``, block by block.

``imports.runs.transferring`` calls ``inspect_target`` once per run that has a file to load (the
table, its columns, the upsert key and the privileges, checked before any byte is read), and
``imports.engine.importing`` calls ``stage`` once per file, inside the file's transaction. No CSV
is parsed in Python and nothing is written to disk: the server parses, the client only moves
blocks (framed by ``imports.engine.framing``), so memory stays flat whatever the file size. With
``header: true`` the file's header names its columns: COPY gets them in the file's order.
Identifiers are always composed with ``psycopg.sql.Identifier`` and option values with
``sql.Literal``, never pasted.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from reconciler.errors import DataError, TargetError
from reconciler.imports.engine.framing import Framed
from reconciler.model.scalars import listed
from reconciler.model.specs import TOOL_TABLES

if TYPE_CHECKING:
    import psycopg

    from reconciler.model.files import Readable
    from reconciler.model.specs import CsvDialect, Target

__all__ = [
    "BLOCK_SIZE",
    "CopyFailure",
    "Staged",
    "TargetTable",
    "copy_failure",
    "copy_statement",
    "inspect_target",
    "load",
    "match_header",
    "stage",
]

# psycopg hands blocks of up to 128 KiB to libpq as they are and slices bigger ones (a copy), so
# this is the largest block that costs no extra copy; benchmarks/bench_import.py measured 64 KiB to
# 1 MiB within noise of each other.
BLOCK_SIZE = 128 * 1024
_STAGE = "_reconcile_stage"
_STAGE_ORDER = "_reconcile_line"
_LINE = re.compile(r"\bline (\d+)")
_COLUMN = re.compile(r"\bcolumn ([^:,]+)")
# The tool's own tables: loading into one would corrupt its state (a replace would wipe ledgers).
_OWN_TABLES = TOOL_TABLES - {_STAGE}
_PRIVILEGES = {
    "append": ("INSERT",),
    "replace": ("INSERT", "DELETE"),
    "upsert": ("INSERT", "UPDATE"),
}
# The table, the columns COPY can fill, the privileges the mode needs and the encoding's number,
# in one round trip: a row of NULLs but the encoding when there is no such table.
_INSPECT = (
    "SELECT c.oid, n.nspname, c.relname, c.relkind, "
    "ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid "
    "AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum), "
    "ARRAY(SELECT has_table_privilege(c.oid, p.name) "
    "FROM unnest(%(privileges)s::text[]) WITH ORDINALITY AS p(name, i) ORDER BY p.i), "
    "pg_char_to_encoding(%(encoding)s) "
    "FROM (SELECT to_regclass(%(table)s) AS oid) AS t "
    "LEFT JOIN pg_class c ON c.oid = t.oid LEFT JOIN pg_namespace n ON n.oid = c.relnamespace"
)


@dataclass(frozen=True, slots=True)
class TargetTable:
    """A checked target: the table, the columns loaded, and what the run's mode needs.

    ``columns`` are the declared columns (or all of the table's); a file with a header loads the
    columns it names, in its order, which must be among ``insertable`` and include every declared
    one. ``nulls_merge`` tells whether the upsert key's unique index treats NULLs as equal
    (``NULLS NOT DISTINCT``); ``key_not_null`` whether a key column refuses NULL.
    """

    table: str
    columns: tuple[str, ...]
    mode: str
    key: tuple[str, ...] = ()
    dialect: CsvDialect | None = None
    insertable: tuple[str, ...] = ()
    declared: bool = False
    nulls_merge: bool = False
    key_not_null: bool = False

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
    privileges = _PRIVILEGES[target.mode]
    row = conn.execute(
        _INSPECT, {"table": name, "privileges": list(privileges), "encoding": dialect.encoding}
    ).fetchone()
    assert row is not None  # one row, of NULLs but the encoding when there is no such table
    oid, schema, relname, relkind, found, allowed, encoding = row
    if oid is None:
        raise TargetError(f"table {target.table} does not exist in the target database")
    _refuse_reserved(target.table, schema, relname, relkind)
    columns = tuple(target.columns or found)
    missing = [c for c in columns if c not in found]
    if missing:
        raise TargetError(
            f"table {target.table} has no column {listed(missing)} (its columns: {listed(found)})"
        )
    key = tuple(target.key or ())
    nulls_merge = key_not_null = False
    if target.mode == "upsert":
        nulls_merge, key_not_null = _check_key(conn, oid, target.table, key, columns)
    for privilege, granted in zip(privileges, allowed, strict=True):
        if not granted:
            raise TargetError(
                f"the target database user may not {privilege} into {target.table}, "
                f"which mode {target.mode!r} needs"
            )
    if encoding is None or encoding < 0:
        raise TargetError(f"csv.encoding {dialect.encoding!r} is not an encoding PostgreSQL knows")
    return TargetTable(
        target.table,
        columns,
        target.mode,
        key,
        dialect,
        insertable=tuple(found),
        declared=target.columns is not None,
        nulls_merge=nulls_merge,
        key_not_null=key_not_null,
    )


def _refuse_reserved(table: str, schema: str, relname: str, relkind: str) -> None:
    if schema in ("pg_catalog", "information_schema") or schema.startswith("pg_toast"):
        raise TargetError(
            f"table {table} is {schema}.{relname}, a system catalog: imports never write there; "
            "set target.table to a table of your own"
        )
    if relname in _OWN_TABLES:
        raise TargetError(
            f"table {table} is {schema}.{relname}, one of reconcile's own tables: loading into it "
            "would corrupt the schedules, jobs or the record of imported files; set target.table "
            "to a table of your own"
        )
    if relkind not in ("r", "p"):
        raise TargetError(f"{table} is not a table (a view, sequence or foreign table?)")


def _check_key(
    conn: psycopg.Connection[Any],
    oid: int,
    table: str,
    key: tuple[str, ...],
    columns: tuple[str, ...],
) -> tuple[bool, bool]:
    """Check the key's unique index; ``(NULLs merge as one key, a key column is NOT NULL)``."""
    absent = [k for k in key if k not in columns]
    if absent:
        raise TargetError(f"upsert key {', '.join(absent)} is not among the loaded columns")
    # ON CONFLICT (key) needs a non-partial, non-expression, immediate unique index on exactly
    # these columns; checking first gives a clear message before a large file is streamed.
    # Every matching index is an arbiter: one that merges NULLs makes NULL keys conflict.
    unique = conn.execute(
        "SELECT i.indnullsnotdistinct FROM pg_index i "
        "WHERE i.indrelid = %s AND i.indisunique AND i.indimmediate "
        "AND i.indpred IS NULL AND i.indexprs IS NULL AND ("
        "  SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a"
        "  WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        ") = %s::text[] AND i.indnkeyatts = %s "
        "ORDER BY 1 DESC",
        (oid, sorted(key), len(key)),
    ).fetchone()
    if unique is None:
        listed = ", ".join(key)
        raise TargetError(
            f"upsert key ({listed}) of {table} has no unique constraint; add one with "
            f"ALTER TABLE {table} ADD UNIQUE ({listed})"
        )
    not_null = conn.execute(
        "SELECT bool_or(attnotnull) FROM pg_attribute WHERE attrelid = %s AND attname = ANY(%s)",
        (oid, list(key)),
    ).fetchone()
    return bool(unique[0]), bool(not_null and not_null[0])


def match_header(names: list[str], target: TargetTable) -> tuple[str, ...]:
    """The target columns the header names, in the file's order; ``DataError`` unless they fit.

    A name matches a column exactly, or else ignoring case and surrounding spaces when that is
    unambiguous. Every name must be a column the target takes, none twice, and every declared
    column and upsert key column must be there.
    """
    takes = target.columns if target.declared else target.insertable
    taken = frozenset(takes)
    folded: dict[str, list[str]] = {}
    for column in takes:
        folded.setdefault(column.casefold(), []).append(column)
    chosen: list[str] = []
    unknown: list[str] = []
    for position, raw in enumerate(names, start=1):
        name = raw.strip()
        if not name:
            unknown.append(f"(column {position} has no name)")
        elif name in taken:
            chosen.append(name)
        elif len(folded.get(name.casefold(), ())) == 1:
            chosen.append(folded[name.casefold()][0])
        else:
            unknown.append(name)
    counts = Counter(chosen)
    twice = sorted(c for c, n in counts.items() if n > 1)
    required = [*(target.columns if target.declared else ()), *target.key]
    missing = [c for c in dict.fromkeys(required) if c not in counts]
    if unknown or twice or missing:
        problems = [
            *([f"unknown: {listed(unknown)}"] if unknown else []),
            *([f"named twice: {listed(twice)}"] if twice else []),
            *([f"missing: {listed(missing)}"] if missing else []),
        ]
        where = "target.columns" if target.declared else f"table {target.table}"
        raise DataError(
            f"the header does not match the target ({'; '.join(problems)}): the header has "
            f"{listed(n.strip() for n in names)}; {where} takes {listed(takes)}",
            line=1,
        )
    return tuple(chosen)


@dataclass(slots=True)
class Staged:
    """A file copied inside its transaction, not yet merged: ``finish`` (in the file's turn)
    makes its rows land. ``rows`` are the records copied, ``header_seen`` whether the file had
    a header record (with ``header: true``)."""

    rows: int
    bytes: int
    header_seen: bool
    _merge: sql.Composed | None = None

    def finish(self, conn: psycopg.Connection[Any]) -> int:
        """Land the rows (an upsert merges its stage now) and return how many landed."""
        if self._merge is None:
            return self.rows
        with conn.cursor() as cur:
            cur.execute(self._merge)
            rows = cur.rowcount
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(_STAGE)))
        return rows


def stage(
    conn: psycopg.Connection[Any],
    target: TargetTable,
    reader: Readable,
    *,
    block_size: int = BLOCK_SIZE,
    on_block: Callable[[int, int], None] | None = None,
) -> Staged:
    """Stream ``reader`` into COPY inside the caller's transaction.

    Append and replace copy into the target itself; an upsert copies into a session-private
    stage, merged by ``Staged.finish``, so that files staged in parallel take no lock on the
    target's rows until their turn. ``on_block(bytes, newlines)`` is called per block (newlines
    approximate rows for progress). ``DataError`` when the file cannot be loaded as declared.
    """
    assert target.dialect is not None
    framed = Framed(reader, target.dialect, block_size=block_size)
    columns = target.columns
    names = framed.header() if target.dialect.header else None
    if names is not None:
        columns = match_header(names, target)
    upsert = target.mode == "upsert"
    into = _create_stage(conn, target, columns) if upsert else target.identifier
    rows, nbytes = _stream(
        conn, into, columns=columns, dialect=target.dialect, framed=framed, on_block=on_block
    )
    if not upsert:
        return Staged(rows, nbytes, names is not None)
    if target.key_not_null:
        _refuse_null_keys(conn, target, into)
    return Staged(rows, nbytes, names is not None, _merge(target, into, columns))


def _create_stage(
    conn: psycopg.Connection[Any], target: TargetTable, columns: tuple[str, ...]
) -> sql.Identifier:
    """The session-private stage an upsert copies into; the merge is one INSERT ... ON CONFLICT.

    Built from the loaded columns only (not LIKE the table) so NOT NULL columns that the file
    does not carry cannot reject rows that the target would have filled with defaults.
    """
    stage_table = sql.Identifier(_STAGE)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            stage_table, cols, target.identifier
        )
    )
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN {} bigint GENERATED ALWAYS AS IDENTITY").format(
            stage_table, sql.Identifier(_STAGE_ORDER)
        )
    )
    return stage_table


def load(
    conn: psycopg.Connection[Any],
    target: TargetTable,
    reader: Readable,
    *,
    block_size: int = BLOCK_SIZE,
    on_block: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """``stage`` and ``finish`` in one: ``(rows landed, bytes read)``."""
    staged = stage(conn, target, reader, block_size=block_size, on_block=on_block)
    return staged.finish(conn), staged.bytes


def _any_null_key(target: TargetTable) -> sql.Composable:
    return sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(k)) for k in target.key)


def _refuse_null_keys(
    conn: psycopg.Connection[Any], target: TargetTable, stage: sql.Composable
) -> None:
    """``DataError`` naming the first record whose key is empty, when the key cannot be NULL."""
    row = conn.execute(
        sql.SQL("SELECT min({}) FROM {} WHERE {}").format(
            sql.Identifier(_STAGE_ORDER), stage, _any_null_key(target)
        )
    ).fetchone()
    if row is not None and row[0] is not None:
        raise DataError(
            f"the upsert key ({', '.join(target.key)}) is empty (NULL) in this record, and "
            f"{target.table} does not allow NULL there; every record needs a key",
            record=int(row[0]),
        )


def _merge(target: TargetTable, stage: sql.Composable, columns: tuple[str, ...]) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    key = sql.SQL(", ").join(sql.Identifier(k) for k in target.key)
    others = [c for c in columns if c not in target.key]
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
    line = sql.Identifier(_STAGE_ORDER)
    # A key repeated within one file would make ON CONFLICT touch a row twice (an error); the
    # last occurrence in the file wins, as if the rows had been applied in order. A key with a
    # NULL never conflicts under a NULLS DISTINCT index, so such rows are all inserted, as a
    # plain INSERT ... ON CONFLICT would: each is its own group (DISTINCT ON groups NULLs).
    groups = (
        key
        if target.nulls_merge
        else sql.SQL("{}, CASE WHEN {} THEN {} END").format(key, _any_null_key(target), line)
    )
    return sql.SQL(
        "INSERT INTO {} ({}) SELECT DISTINCT ON ({}) {} FROM {} ORDER BY {}, {} DESC "
        "ON CONFLICT ({}) {}"
    ).format(target.identifier, cols, groups, cols, stage, groups, line, key, action)


def _stream(
    conn: psycopg.Connection[Any],
    table: sql.Composable,
    *,
    columns: tuple[str, ...],
    dialect: CsvDialect,
    framed: Framed,
    on_block: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    statement = copy_statement(table, columns, dialect)
    read = lines = 0
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            for block in framed.blocks():
                copy.write(block)
                if on_block is not None:  # framing counted the line ends: not counted again
                    on_block(framed.bytes_read - read, framed.lines - lines)
                read, lines = framed.bytes_read, framed.lines
        return cur.rowcount, framed.bytes_read


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
