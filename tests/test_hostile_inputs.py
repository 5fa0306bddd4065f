"""What hostile input gets besides linear time: short messages, bounded memory, and the same
answer from PostgreSQL as before the framing held a run of empty lines back in a few bytes."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator

import psycopg
import pytest

from reconciler.errors import DataError
from reconciler.imports.engine.copying import TargetTable, copy_statement, match_header
from reconciler.imports.engine.framing import Framed
from reconciler.model.scalars import listed
from reconciler.model.specs import CsvDialect


@pytest.mark.parametrize(
    ("names", "limit", "expected"),
    [
        ([], 3, ""),
        (["a", "b"], 3, "a, b"),
        (["a", "b", "c"], 3, "a, b, c"),
        (["a", "b", "c", "d", "e"], 3, "a, b, c and 2 more"),
        (["x" * 100], 3, "x" * 37 + "..."),
    ],
)
def test_listed_names_a_few_and_counts_the_rest(
    names: list[str], limit: int, expected: str
) -> None:
    """At most ``limit`` names, each cut short, then how many more."""
    assert listed(names, limit) == expected


def test_a_header_of_100000_unknown_columns_gets_a_short_message() -> None:
    """The message lists a few names and counts the rest (it was 1.58 MB)."""
    names = [f"column_{i}" for i in range(100_000)]
    target = TargetTable("t", ("a", "b"), "append", insertable=("a", "b"))
    with pytest.raises(DataError) as caught:
        match_header(names, target)
    message = str(caught.value)
    assert len(message) < 1000
    assert "unknown: column_0, column_1" in message
    assert "and 99990 more" in message


def test_a_run_of_empty_lines_holds_no_memory() -> None:
    """16 MB of empty lines, at the end or before a record, never sit in memory whole."""
    for tail in (b"", b"b\n"):
        data = b"a\r\n" + b"\r\n" * (8 << 20) + tail
        framed = Framed(io.BytesIO(data), CsvDialect(header=False), block_size=64 * 1024)
        tracemalloc.start()
        try:
            size = sum(len(block) for block in framed.blocks())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert size == (len(data) if tail else 3)
        assert peak < 1 << 20


@pytest.fixture(scope="module")
def conn(pg_server: str) -> Iterator[psycopg.Connection]:
    """A connection to the server's maintenance database; every copy rolls back."""
    with psycopg.connect(pg_server) as c:
        yield c


def _copy_error(conn: psycopg.Connection, blocks: list[bytes]) -> tuple[str, str]:
    statement = copy_statement(psycopg.sql.Identifier("framed"), ("c1",), CsvDialect(header=False))
    try:
        conn.execute("CREATE TEMP TABLE framed (c1 text)")
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for block in blocks:
                copy.write(block)
    except psycopg.Error as exc:
        return exc.diag.message_primary or "", exc.diag.context or ""
    finally:
        conn.rollback()
    return "", ""


@pytest.mark.parametrize(
    "run",
    [b"\n\r\n\n", b"\n" * 5 + b"\r" + b"\n" * 5, b"\r\n\r\n\r\r\r\n", b"\n\r\r\n\r\n"],
)
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_mixed_run_of_empty_lines_fails_as_written(
    conn: psycopg.Connection, run: bytes, eol: bytes
) -> None:
    """Line ends that change kind in a run held back are cut a few bytes after the change; with
    records after them, PostgreSQL refuses the cut stream where it refuses the whole one."""
    data = b"x" * 100 + eol + b"a" + eol + run * 4000 + b"b" + eol
    framed = Framed(io.BytesIO(data), CsvDialect(header=False), block_size=7)
    cut = list(framed.blocks())
    assert sum(map(len, cut)) < len(data)
    assert _copy_error(conn, cut) == _copy_error(conn, [data])
    assert _copy_error(conn, [data])[0]
