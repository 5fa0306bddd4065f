"""COPY streaming against real PostgreSQL: dialects, modes, bad rows, target checks, flat memory."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator

import psycopg
import pytest

from reconciler.errors import TargetError
from reconciler.imports.engine.copying import copy_failure, copy_statement, inspect_target, load
from reconciler.model.specs import CsvDialect, Target

SALES = "CREATE TABLE public.sales (sale_id int PRIMARY KEY, sold_at date, amount numeric)"


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection to a fresh database holding an empty public.sales."""
    with psycopg.connect(database_url) as c:
        c.execute(SALES)
        c.commit()
        yield c


def _load(conn: psycopg.Connection, data: bytes, **spec: object) -> tuple[int, int]:
    dialect = CsvDialect.model_validate(spec.pop("csv", {}))
    target = inspect_target(conn, Target.model_validate({"table": "public.sales", **spec}), dialect)
    with conn.transaction():
        return load(conn, target, io.BytesIO(data))


def _rows(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    rows = conn.execute("SELECT sale_id, sold_at::text, amount::text FROM sales ORDER BY 1")
    return rows.fetchall()


def test_statement_quotes_identifiers_and_literals(conn: psycopg.Connection) -> None:
    """Table, columns and option values are quoted, never pasted."""
    dialect = CsvDialect(delimiter=";", quote="'", null="N/A", header=False)
    statement = copy_statement(
        psycopg.sql.Identifier("odd schema", 'ta"ble'), ("a b",), dialect
    ).as_string(conn)
    assert statement == (
        'COPY "odd schema"."ta""ble" ("a b") FROM STDIN WITH (FORMAT csv, HEADER false, '
        "DELIMITER ';', QUOTE '''', ESCAPE '''', NULL 'N/A', ENCODING 'UTF8')"
    )


@pytest.mark.parametrize(
    ("data", "csv", "expected"),
    [
        (
            b"sale_id,sold_at,amount\n1,2026-11-01,9.50\n2,2026-11-01,\n",
            {},
            [(1, "2026-11-01", "9.50"), (2, "2026-11-01", None)],
        ),
        (
            b'1;2026-11-02;NULL\n2;"2026-11-03";1.5\n',
            {"header": False, "delimiter": ";", "null": "NULL"},
            [(1, "2026-11-02", None), (2, "2026-11-03", "1.5")],
        ),
        (
            b"sale_id|sold_at|amount\n7|'2026-11-04'|'3'\n",
            {"delimiter": "|", "quote": "'"},
            [(7, "2026-11-04", "3")],
        ),
        (
            "sale_id,sold_at,amount\n5,2026-11-05,4\n".encode("latin-1"),
            {"encoding": "LATIN1"},
            [(5, "2026-11-05", "4")],
        ),
    ],
)
def test_append_honours_the_dialect(
    conn: psycopg.Connection,
    data: bytes,
    csv: dict[str, object],
    expected: list[tuple[object, ...]],
) -> None:
    """Each CSV dialect option reaches COPY and the rows land as written."""
    rows, nbytes = _load(conn, data, csv=csv)
    assert (rows, nbytes) == (len(expected), len(data))
    assert _rows(conn) == expected


def test_columns_default_to_the_tables_and_skip_generated(conn: psycopg.Connection) -> None:
    """Without columns, every non-generated column of the table is loaded, in order."""
    conn.execute(
        "ALTER TABLE sales ADD COLUMN doubled numeric GENERATED ALWAYS AS (amount*2) STORED"
    )
    conn.commit()
    target = inspect_target(conn, Target(table="sales"), CsvDialect())
    assert target.columns == ("sale_id", "sold_at", "amount")


def test_explicit_columns_leave_others_to_defaults(conn: psycopg.Connection) -> None:
    """Only the listed columns are read from the file."""
    _load(conn, b"amount,sale_id\n3,1\n", columns=["amount", "sale_id"])
    assert _rows(conn) == [(1, None, "3")]


@pytest.mark.parametrize(
    ("data", "line", "column", "message"),
    [
        (b"sale_id,sold_at,amount\n1,2026-11-01,1\n2,2026-11-01,abc\n", 3, "amount", "numeric"),
        (b"sale_id,sold_at,amount\n1,2026-11-01,1,9\n", 2, None, "extra data"),
        (b"sale_id,sold_at,amount\n1,2026-11-01,1\n1,2026-11-02,2\n", 3, None, "duplicate"),
    ],
)
def test_a_bad_row_fails_the_whole_file(
    conn: psycopg.Connection, data: bytes, line: int | None, column: str | None, message: str
) -> None:
    """A rejected row leaves no partial rows; the line, column and message are reported."""
    with pytest.raises(psycopg.Error) as info:
        _load(conn, data)
    failure = copy_failure(info.value)
    assert (failure.line, failure.column) == (line, column)
    assert message in failure.message
    assert _rows(conn) == []


def test_upsert_updates_inserts_and_last_duplicate_wins(conn: psycopg.Connection) -> None:
    """Upsert merges on the key; a key repeated in the file takes its last row; rows = landed."""
    conn.execute("INSERT INTO sales VALUES (1, '2026-01-01', 1), (2, '2026-01-01', 2)")
    conn.commit()
    data = b"sale_id,sold_at,amount\n2,2026-11-02,20\n3,2026-11-03,30\n3,2026-11-03,33\n"
    rows, _ = _load(conn, data, mode="upsert", key=["sale_id"])
    assert rows == 2  # one row updated, one inserted: the repeated key lands once
    assert _rows(conn) == [(1, "2026-01-01", "1"), (2, "2026-11-02", "20"), (3, "2026-11-03", "33")]


def test_upsert_with_only_key_columns_does_nothing_on_conflict(conn: psycopg.Connection) -> None:
    """When every loaded column is the key, existing rows are left as they are."""
    conn.execute("INSERT INTO sales VALUES (1, '2026-01-01', 1)")
    conn.commit()
    _load(conn, b"sale_id\n1\n4\n", mode="upsert", key=["sale_id"], columns=["sale_id"])
    assert _rows(conn) == [(1, "2026-01-01", "1"), (4, None, None)]


@pytest.mark.parametrize(
    ("setup", "spec", "message"),
    [
        ("", {"table": "public.nope"}, "table public.nope does not exist"),
        ("", {"table": "sales", "columns": ["sale_id", "price"]}, "has no column price"),
        (
            "CREATE TABLE nokey (id int, v text)",
            {"table": "nokey", "mode": "upsert", "key": ["id"]},
            "ALTER TABLE nokey ADD UNIQUE (id)",
        ),
        (
            "CREATE TABLE part (id int, v text, UNIQUE (id, v))",
            {"table": "part", "mode": "upsert", "key": ["id"]},
            "has no unique constraint",
        ),
        (
            "",
            {"table": "sales", "mode": "upsert", "key": ["sale_id"], "columns": ["amount"]},
            "not among the loaded columns",
        ),
    ],
)
def test_unusable_targets_are_refused_before_streaming(
    conn: psycopg.Connection, setup: str, spec: dict[str, object], message: str
) -> None:
    """A missing table, column or unique key is a clear TargetError."""
    if setup:
        conn.execute(setup)
        conn.commit()
    with pytest.raises(TargetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        inspect_target(conn, Target.model_validate(spec), CsvDialect())


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("pg_catalog.pg_authid", "a system catalog"),
        ("pg_authid", "a system catalog"),  # pg_catalog is always first on the search path
        ("information_schema.tables", "a system catalog"),
        ("public.cpi_imported_files", "one of reconcile's own tables"),
        ("cpi_jobs", "one of reconcile's own tables"),
        ("sales_view", "is not a table"),
    ],
)
def test_catalogs_own_tables_and_views_are_refused_at_run(
    conn: psycopg.Connection, table: str, message: str
) -> None:
    """Even a stored spec that validate never saw cannot load into catalogs or our own tables."""
    conn.execute("CREATE VIEW sales_view AS SELECT * FROM sales")
    conn.commit()
    target = Target.model_construct(table=table, mode="replace", columns=None, key=None)
    with pytest.raises(TargetError, match=message):
        inspect_target(conn, target, CsvDialect())


def test_an_unknown_encoding_is_refused(conn: psycopg.Connection) -> None:
    """csv.encoding is checked against PostgreSQL's encodings up front."""
    with pytest.raises(TargetError, match="KLINGON"):
        inspect_target(conn, Target(table="sales"), CsvDialect(encoding="KLINGON"))


class _Repeated:
    """A reader handing out the same block of CSV lines ``times`` times, as a network would."""

    def __init__(self, block: bytes, times: int) -> None:
        self._block, self._left = block, times

    def read(self, n: int = -1) -> bytes:
        assert len(self._block) <= n
        if not self._left:
            return b""
        self._left -= 1
        return self._block


def test_memory_stays_flat_whatever_the_size(conn: psycopg.Connection) -> None:
    """Streaming 50 MB allocates no more than a block at a time: nothing is buffered."""
    conn.execute("CREATE TABLE notes (id int, note text)")
    line = b"7," + b"x" * 120 + b"\n"
    block = line * ((128 * 1024) // len(line))
    target = inspect_target(conn, Target(table="notes"), CsvDialect(header=False))
    tracemalloc.start()
    try:
        with conn.transaction():
            rows, nbytes = load(conn, target, _Repeated(block, 400))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 400 * (len(block) // len(line))
    assert nbytes == 400 * len(block) > 50_000_000
    assert peak < 1_000_000
