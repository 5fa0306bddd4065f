r"""The framed CSV stream: block-size independence, and what real PostgreSQL loads from it.

The property tests write files with tricky values (``\.``, quotes, line ends, delimiters), a
byte-order mark, either line end and blank lines at the end, then check that PostgreSQL (15 in
CI as well as the embedded server) loads exactly the values written.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from unittest.mock import patch

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import DataError
from reconciler.imports.engine import framing
from reconciler.imports.engine.copying import inspect_target, load
from reconciler.imports.engine.framing import Framed, locate_open_quote, record_line
from reconciler.model.specs import CsvDialect, Target

DIALECTS = [CsvDialect(header=False), CsvDialect(header=False, escape="\\")]


def _framed(data: bytes, dialect: CsvDialect, block_size: int) -> bytes:
    framed = Framed(io.BytesIO(data), dialect, block_size=block_size)
    return b"".join(framed.blocks())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xef\xbb\xbfa\n", b"a\n"),
        (b"a\n\\.\nb\n", b'a\n"\\."\nb\n'),
        (b"a\r\n\\.\r\nb\r\n", b'a\r\n"\\."\r\nb\r\n'),
        (b"\\.", b'"\\."'),
        (b"\\.\n", b'"\\."\n'),
        (b'"x\n\\.\ny"\n', b'"x\n\\.\ny"\n'),
        (b"\\.x\n\\\n", b"\\.x\n\\\n"),
        (b"a\n\n\n", b"a\n"),
        (b"a\r\n\r\n\r\n", b"a\r\n"),
        (b"a\n\nb\n\n", b"a\n\nb\n"),
        (b"\n\n", b""),
        (b"", b""),
    ],
)
def test_framing_rewrites_only_what_copy_must_not_see(data: bytes, expected: bytes) -> None:
    """BOM dropped, bare \\. records quoted, trailing blank lines dropped; nothing else changes."""
    for block_size in (1, 2, 3, 7, 1024):
        assert _framed(data, CsvDialect(header=False), block_size) == expected


@given(
    data=st.binary().map(bytes)
    | st.lists(st.sampled_from([b"\\", b".", b'"', b",", b"\n", b"\r", b"a", b"\\."])).map(
        b"".join
    ),
    block_size=st.integers(1, 9),
    dialect=st.sampled_from(DIALECTS),
)
def test_framing_does_not_depend_on_block_boundaries(
    data: bytes, block_size: int, dialect: CsvDialect
) -> None:
    """However the source splits its bytes, the framed stream (or the refusal) is the same."""

    def outcome(size: int) -> bytes | str:
        try:
            return _framed(data, dialect, size)
        except DataError as exc:
            return exc.message

    assert outcome(block_size) == outcome(1 << 20)


def test_a_utf8_mark_under_another_encoding_fails_with_advice() -> None:
    """A UTF-8 byte-order mark under csv.encoding LATIN1 says what to set."""
    with pytest.raises(DataError, match=r"set csv\.encoding: UTF8"):
        _framed(b"\xef\xbb\xbfa\n", CsvDialect(header=False, encoding="LATIN1"), 64)


def test_utf16_fails_with_advice() -> None:
    """A UTF-16 file is refused with what to do, not loaded as garbage."""
    with pytest.raises(DataError, match="UTF-16LE"):
        _framed(b"\xff\xfea\x00\n\x00", CsvDialect(header=False), 64)


def test_backslash_dot_cannot_be_null() -> None:
    """With csv.null '\\.' a bare \\. record is ambiguous: the file fails naming its line."""
    with pytest.raises(DataError) as caught:
        _framed(b"a\nb\n\\.\n", CsvDialect(header=False, null="\\."), 64)
    assert caught.value.line == 3


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b'a,b\n1,"x\n2,"y"\n3,"z"\n', 2),
        (b'a,b\n1,"ok"\n2,"x""y\n', 3),
        (b'a,b\n1,"multi\nline"\n2,"open\n', 4),
    ],
)
def test_the_open_quote_is_located_where_it_began(data: bytes, line: int) -> None:
    """The first record whose quoting breaks is reported by its first line."""
    assert locate_open_quote(io.BytesIO(data), CsvDialect()) == line


def test_records_are_mapped_to_their_first_line() -> None:
    """Data record N is found on its physical line, past multi-line values and the header."""
    data = b'a,b\n1,"x\ny"\n2,"u\nv"\n3,z\n'
    lines = [record_line(io.BytesIO(data), CsvDialect(), n) for n in (1, 2, 3, 4)]
    assert lines == [2, 4, 6, None]


@pytest.fixture(scope="module")
def conn(pg_server: str) -> Iterator[psycopg.Connection]:
    """A connection to the server's maintenance database; every example rolls back."""
    with psycopg.connect(pg_server) as c:
        yield c


_VALUE = st.lists(
    st.sampled_from(["\\", ".", '"', ",", "\n", "\r\n", "a", "é", " "]), min_size=1, max_size=6
).map("".join) | st.just("\\.")


def _field(value: str | None) -> str:
    if value is None:
        return ""
    if any(c in value for c in ',"\n\r') or value == "\\.":
        return '"' + value.replace('"', '""') + '"' if value != "\\." else "\\."
    return value


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(st.lists(st.none() | _VALUE, min_size=1, max_size=1), min_size=1, max_size=8)
    | st.lists(st.lists(st.none() | _VALUE, min_size=2, max_size=2), min_size=1, max_size=8),
    eol=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    header=st.booleans(),
    blank_tail=st.integers(0, 3),
)
def test_postgres_loads_exactly_the_values_written(
    conn: psycopg.Connection,
    *,
    rows: list[list[str | None]],
    eol: str,
    bom: bool,
    header: bool,
    blank_tail: int,
) -> None:
    """Whatever the values, line ends, mark and blank tail, the table holds what was written."""
    width = len(rows[0])
    columns = ["c1", "c2"][:width]
    lines = [",".join(columns)] if header else []
    lines += [",".join(_field(v) for v in row) for row in rows]
    data = ("\ufeff" if bom else "") + eol.join(lines) + eol + eol * blank_tail
    expected = [tuple(r) for r in rows]
    if width == 1:  # an empty line at the end is not a record, even where it meant NULL
        while expected and expected[-1] == (None,):
            expected.pop()
    try:
        conn.execute("CREATE TEMP TABLE framed (n serial, c1 text, c2 text)")
        target = inspect_target(
            conn,
            Target.model_validate({"table": "framed", "columns": columns}),
            CsvDialect(header=header),
        )
        rows_loaded, nbytes = load(conn, target, io.BytesIO(data.encode()), block_size=5)
        got = conn.execute(f"SELECT {', '.join(columns)} FROM framed ORDER BY n").fetchall()
    finally:
        conn.rollback()
    assert got == expected
    assert rows_loaded == len(expected)
    assert nbytes == len(data.encode())


_TEXT = st.lists(
    st.sampled_from(["a", ",", '"', "\\", "\n", "\r\n", "\r", " ", "é", "x" * 300]), max_size=5
).map("".join)


def _csv_field(value: str, dialect: CsvDialect, *, quoted: bool) -> str:
    if not quoted and not any(c in value for c in ',"\n\r'):
        return value
    if dialect.escape is None:
        return '"' + value.replace('"', '""') + '"'
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line_ends(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(st.tuples(_TEXT, st.booleans()), min_size=1, max_size=3), max_size=6),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    dialect=st.sampled_from(DIALECTS),
    stray=st.booleans(),
    block_size=st.sampled_from([1, 2, 3, 7, 64 * 1024]),
)
def test_lines_are_named_whatever_the_values_and_blocks(
    *,
    rows: list[list[tuple[str, bool]]],
    eol: str,
    dialect: CsvDialect,
    stray: bool,
    block_size: int,
) -> None:
    """Each record is found on its first line, and a quote left open on the first line of its
    record, whatever the values before (quotes, escapes, line ends of every kind, long runs)
    and however the re-read's blocks fall."""
    records = [",".join(_csv_field(v, dialect, quoted=q) for v, q in row) for row in rows]
    firsts = [1 + sum(_line_ends(r + eol) for r in records[:i]) for i in range(len(records))]
    text = "".join(r + eol for r in records)
    opened = 1 + _line_ends(text)
    if stray:
        text += f'z,"open{eol}more{eol}'
    else:
        while records and not records[-1]:  # empty lines at the end are not records
            records.pop()
            firsts.pop()
    data = text.encode()
    with patch.object(framing, "_DIAGNOSE_BLOCK", block_size):
        found = [record_line(io.BytesIO(data), dialect, n + 1) for n in range(len(records))]
        located = locate_open_quote(io.BytesIO(data), dialect)
    assert found == firsts
    assert located == (opened if stray else None)


@pytest.mark.parametrize("size", [128 * 1024 + 1, 200_000, 3 * 1024 * 1024])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_no_value_is_too_long_to_name_the_line_after_it(size: int, eol: str) -> None:
    """A value longer than any block or field limit, alone or over several lines, moves no line."""
    for long in ("x" * size, f"x{eol}" * (size // 2)):
        before = f'id,body{eol}1,short{eol}2,"{long}"{eol}'
        after = _line_ends(before) + 1
        data = (before + f'3,ok{eol}4,"open{eol}5,x{eol}').encode()
        assert record_line(io.BytesIO(data), CsvDialect(), 3) == after
        assert locate_open_quote(io.BytesIO(data), CsvDialect()) == after + 1


@pytest.mark.parametrize(
    ("data", "refused"),
    [
        ("id,name\n1,Ada\n".encode("utf-16-le"), "UTF-16LE without a byte-order mark"),
        ("id,name\n1,Ada\n".encode("utf-16-be"), "UTF-16BE without a byte-order mark"),
        ("a\n".encode("utf-16-le"), "UTF-16LE without a byte-order mark"),
        ("\ufeffid\n".encode("utf-16-le"), "UTF-16LE (it starts with that byte-order mark)"),
        ("\ufeffid\n".encode("utf-16-be"), "UTF-16BE (it starts with that byte-order mark)"),
        (b"id,name\n1,B\x00e\n2,\x00\x00\n", None),
        (b"a\x00", None),
        (b"\x00", None),
        ("ą,ł\n".encode("utf-16-le"), None),  # no zero bytes to go by: PostgreSQL refuses it
    ],
)
def test_utf16_without_a_mark_is_told_from_its_first_bytes(
    data: bytes, refused: str | None
) -> None:
    """Zero bytes in most units on one side mean UTF-16 and fail on line 1; a NUL in a value
    does not, and is left to PostgreSQL (which names its line)."""
    for block_size in (1, 5, 1024):
        if refused is None:
            assert _framed(data, CsvDialect(header=False), block_size) == data
            continue
        with pytest.raises(DataError, match=re.escape(refused)) as caught:
            _framed(data, CsvDialect(header=False), block_size)
        assert caught.value.line == 1


@pytest.mark.parametrize(
    ("data", "encoding", "names"),
    [
        (b"id,na\xffme\n1,x\n", "UTF8", ["id", "na\\xffme"]),
        (b"id,na\x00me\n1,x\n", "UTF8", ["id", "na\x00me"]),
        (b"id,na\xffme\n1,x\n", "LATIN1", ["id", "na\xffme"]),
    ],
)
def test_header_bytes_the_encoding_cannot_read_are_escaped(
    data: bytes, encoding: str, names: list[str]
) -> None:
    """A header byte that is not valid in csv.encoding is shown as \\xNN, never dropped."""
    framed = Framed(io.BytesIO(data), CsvDialect(encoding=encoding), block_size=3)
    assert framed.header() == names


@pytest.mark.parametrize(
    ("data", "escape", "line"),
    [
        (b'1,ab"c\n2,x\n', None, 1),  # PostgreSQL opens a quote inside a value too
        (b'1,"x"y\n2,x\n', None, 1),
        (b'1,"x"\n2,"y" \n3,z\n', None, 2),
        (b'1,"a""\n2,x\n', None, 1),
        (b'1,"a\\"\n2,x\n', "\\", 1),
        (b'1,"a\\\\"\n2,"b\n', "\\", 2),
        (b'1,"a\\b"\n2,"c""d"\n', "\\", 2),  # with its own escape, a doubled quote breaks
        (b'1,"a"\r2,"b\r3,c\r', None, 2),
        (b'1,"a\r\n"\r\n2,"b\r\n', None, 3),
        (b'1,"a",2\n', None, None),
        (b'1,"a""b","",""""\n', None, None),
        (b'1,"a\\"b"\n', "\\", None),
    ],
)
def test_the_stray_quote_is_found_as_postgresql_splits_records(
    data: bytes, escape: str | None, line: int | None
) -> None:
    """A quote opened anywhere, closed before anything but a delimiter or a line end, or never
    closed, breaks the record it is in; escapes and line ends of every kind are followed."""
    dialect = CsvDialect(header=False, escape=escape)
    for block_size in (1, 2, 5, 64 * 1024):
        with patch.object(framing, "_DIAGNOSE_BLOCK", block_size):
            assert locate_open_quote(io.BytesIO(data), dialect) == line
