r"""Framing a CSV byte stream for COPY: the few things the server must not see, fixed in flight.

``imports.engine.copying.load`` wraps each file's stream in ``Framed`` before ``COPY ... FROM
STDIN``:

- a UTF-8 byte-order mark at the start is dropped: it is never data. A UTF-8 mark under another
  ``csv.encoding``, or a UTF-16 one, fails the file saying what to set or convert instead;
- a record that is exactly ``\.`` is sent quoted: PostgreSQL 15 to 17 take an unquoted ``\.``
  line for end-of-data in CSV mode and silently drop the rest of the file, while ``"\."`` is the
  same two-character value on every version;
- empty lines at the end of the file are dropped: they are not records;
- with ``header: true`` the header record is read ahead (``header()``), so that the file's
  columns are matched to the table's by name.

Nothing is parsed into values on this path: blocks are searched for line ends and quote
characters with ``bytes`` methods, so the cost per byte stays in C and memory stays one block.
Whether a ``\.`` line lies inside a quoted value is told by the parity of the quote characters
before it (the quote doubles as its own escape by default); with a distinct escape character the
quote and escape bytes are walked one by one instead.

When COPY has failed, ``locate_open_quote`` and ``record_line`` read the file again, framed and
decoded, to say where the problem lies: only on that error path, following the quoting with
``quoting.Records``, which holds no value, so that no value's length moves the line they name.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from reconciler.errors import DataError
from reconciler.imports.engine.quoting import Quotes, Records

if TYPE_CHECKING:
    from reconciler.model.files import Readable
    from reconciler.model.specs import CsvDialect

__all__ = [
    "HEADER_LIMIT",
    "Framed",
    "locate_open_quote",
    "python_codec",
    "record_line",
]

HEADER_LIMIT = 1 << 20  # a header record longer than this is not a header
_BOM = b"\xef\xbb\xbf"
_UTF16 = {b"\xff\xfe": "UTF-16LE", b"\xfe\xff": "UTF-16BE"}
_SNIFF = 64  # the first bytes, read before any is passed on: enough to tell UTF-16
_EOL = frozenset(b"\r\n")
_MARKER = b"\\."
_BACKSLASH = b"\\"  # a block without one holds no marker: one memchr, ten times a two-byte search
_DIAGNOSE_BLOCK = 64 * 1024


def _is_utf8(encoding: str) -> bool:
    return encoding.upper().replace("-", "").replace("_", "") in {"UTF8", "UNICODE"}


def python_codec(encoding: str) -> str:
    """Python's codec for a PostgreSQL encoding name (``latin-1`` when Python has none)."""
    name = encoding.upper().replace("-", "").replace("_", "")
    if name in {"UTF8", "UNICODE"}:
        return "utf-8"
    if name == "SQLASCII":
        return "latin-1"
    if name.startswith("WIN") and name[3:].isdigit():
        name = f"cp{name[3:]}"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "latin-1"


def _utf16_without_mark(head: bytes) -> str | None:
    """``UTF-16LE`` or ``UTF-16BE`` when most two-byte units of ``head`` have one zero byte.

    Text in the encodings PostgreSQL reads has no NUL bytes; ASCII (or Latin-1) text in UTF-16
    has one in every unit, as the high byte: second (LE) or first (BE). A NUL or two in a value
    does not look like that.
    """
    units = len(head) // 2
    if units < 2:
        return None
    even, odd = head[0 : units * 2 : 2].count(0), head[1 : units * 2 : 2].count(0)
    if odd * 2 > units and even * 4 < units:
        return "UTF-16LE"
    if even * 2 > units and odd * 4 < units:
        return "UTF-16BE"
    return None


class Framed:
    """``reader``'s bytes as COPY must receive them; iterate ``blocks()`` once."""

    def __init__(self, reader: Readable, dialect: CsvDialect, *, block_size: int) -> None:
        self._reader = reader
        self._dialect = dialect
        self._block_size = block_size
        quote = dialect.quote.encode("utf-8")
        escape = (dialect.escape or dialect.quote).encode("utf-8")
        self._quote = quote
        # PostgreSQL refuses multi-byte quote and escape characters itself; nothing to track then.
        self._quotes = Quotes(quote[0], escape[0]) if len(quote) == len(escape) == 1 else None
        self._head = b""
        self._started = False
        self._line_start = True
        self.lines = 0  # line ends passed on so far
        self.bytes_read = 0  # from ``reader``, before framing

    def _read(self) -> bytes:
        block = self._reader.read(self._block_size)
        self.bytes_read += len(block)
        return block

    def _first(self) -> None:
        """Read the first bytes and deal with a byte-order mark, or UTF-16 without one."""
        self._started = True
        head = b""
        while len(head) < _SNIFF:
            block = self._read()
            if not block:
                break
            head += block
        if head.startswith(_BOM):
            if not _is_utf8(self._dialect.encoding):
                raise DataError(
                    "the file starts with a UTF-8 byte-order mark but csv.encoding is "
                    f"{self._dialect.encoding}; set csv.encoding: UTF8",
                    line=1,
                )
            head = head[len(_BOM) :]
        elif head[:2] in _UTF16:
            raise DataError(
                f"the file is {_UTF16[head[:2]]} (it starts with that byte-order mark), which "
                "PostgreSQL cannot read; have it exported as UTF-8",
                line=1,
            )
        elif utf16 := _utf16_without_mark(head[:_SNIFF]):
            raise DataError(
                f"the file looks like {utf16} without a byte-order mark (every other byte is 0), "
                "which PostgreSQL cannot read; have it exported as UTF-8",
                line=1,
            )
        self._head = head

    def header(self) -> list[str] | None:
        """The header record's names, read ahead of the stream; None for an empty file."""
        if not self._started:
            self._first()
        # Each block is searched once, the quoting carried on: a long header costs its length.
        state = _header_quotes(self._dialect)
        pieces, size = [self._head], len(self._head)
        end = _record_end(self._head, state)
        while end is None:
            if size > HEADER_LIMIT:
                raise DataError(
                    f"the header record is longer than {HEADER_LIMIT // 1024} KiB; "
                    "is csv.header right for this file?",
                    line=1,
                )
            block = self._read()
            if not block:
                end = size
                break
            at = _record_end(block, state)
            end = None if at is None else size + at
            pieces.append(block)
            size += len(block)
        self._head = b"".join(pieces)
        # A byte the encoding cannot read shows escaped in an error, never dropped.
        codec = python_codec(self._dialect.encoding)
        text = self._head[:end].decode(codec, errors="backslashreplace")
        if not text.strip("\r\n"):
            return None
        try:
            return next(csv.reader([text.rstrip("\r\n")], **_csv_options(self._dialect)), [])
        except csv.Error as exc:
            raise DataError(f"the header record is not valid CSV ({exc})", line=1) from exc

    def blocks(self) -> Iterator[bytes]:
        """The framed stream, block by block.

        What may end the file is held back: a last line that may become ``\\.`` (``held``, at
        most two bytes) and the line ends after it (``blank``, counted, not kept), so that
        neither time nor memory grows with a run of empty lines.
        """
        if not self._started:
            self._first()
        held, self._head = self._head, b""
        blank = _Blank()
        while True:
            block = self._read()
            if blank and block and not block.strip(b"\r\n"):
                blank.feed(block)
                continue
            if not block:
                tail = _without_blank_tail(held + blank.head(), after_record=not self._line_start)
                if tail := self._frame(tail, final=True):
                    yield tail
                return
            if blank:
                for piece in blank.pieces(held, self._block_size):
                    yield self._frame(piece, final=False)
                self.lines += blank.dropped
                held, blank = b"", _Blank()
            data = held + block if held else block
            cut = self._cut(data)
            held = data[cut:]
            end = len(held.rstrip(b"\r\n"))
            if end < len(held) and not self._inside(data, cut, end):
                blank.feed(held[end:])
                held = held[:end]
            elif end < len(held):  # line ends inside a quoted value are data: pass them on
                cut, held = len(data), b""
            if cut:
                yield self._frame(data[:cut] if cut < len(data) else data, final=False)

    def _inside(self, data: bytes, cut: int, end: int) -> bool:
        """Whether ``data[cut:][end:]``, line ends held back, would lie inside a quoted value."""
        if self._quotes is None:
            return False
        state = self._quotes.copy()
        state.advance(data, 0, cut + end)
        return state.inside

    @staticmethod
    def _cut(data: bytes) -> int:
        """Where to stop passing on: before line ends that may be blank lines at the very end, and
        before a last line that may yet become ``\\.`` once its next byte is known."""
        end = len(data)
        while end and data[end - 1] in _EOL:
            end -= 1
        start = max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end)) + 1
        if end - start <= len(_MARKER) and _MARKER.startswith(data[start:end]) and end > start:
            return start
        return end

    def _frame(self, chunk: bytes, *, final: bool) -> bytes:
        out = chunk
        if self._quotes is not None and _BACKSLASH in chunk:
            out = self._quote_markers(chunk, final=final)
        if self._quotes is not None:
            self._quotes.advance(chunk, 0, len(chunk))
        if chunk:
            self._line_start = chunk[-1] in _EOL
        self.lines += chunk.count(b"\n")
        return out

    def _quote_markers(self, chunk: bytes, *, final: bool) -> bytes:
        assert self._quotes is not None
        state = self._quotes.copy()
        pieces: list[bytes] = []
        done = scanned = 0
        at = chunk.find(_MARKER)
        while at >= 0:
            after = at + len(_MARKER)
            starts = chunk[at - 1] in _EOL if at else self._line_start
            ends = chunk[after] in _EOL if after < len(chunk) else final
            if starts and ends:
                state.advance(chunk, scanned, at)
                scanned = at
                if not state.inside:
                    if self._dialect.null == "\\.":
                        line = self.lines + chunk.count(b"\n", 0, at) + 1
                        raise DataError(
                            "this line is exactly \\., which is both csv.null and what "
                            "PostgreSQL 15 to 17 take for the end of the data; choose another "
                            "csv.null",
                            line=line,
                        )
                    pieces += (chunk[done:at], self._quote, _MARKER, self._quote)
                    done = after
            at = chunk.find(_MARKER, after)
        if not pieces:
            return chunk
        pieces.append(chunk[done:])
        return b"".join(pieces)


# Bytes of a run of line ends kept after its first change of kind (a '\r' in a run of '\n'):
# PostgreSQL stops at that change with an error when more records follow, so what comes after
# it is never read, and a run at the end is dropped whatever it holds.
_KEEP = 2
_REPEATS = {b"\n": re.compile(b"\n*+"), b"\r\n": re.compile(b"(?:\r\n)*+")}


class _Blank:
    """A run of line ends outside quotes, held back until the file shows what follows it.

    Kept as one kind of line end repeated (``unit`` times ``count``) and the first ``_KEEP``
    bytes after it, with the newlines of the rest counted (``dropped``), so that the lines
    passed on still add up. A lone ``\\r`` at the end of what was fed may yet begin ``\\r\\n``:
    it stays in ``rest`` until the next bytes tell.
    """

    def __init__(self) -> None:
        self.unit = b""
        self.count = 0
        self.rest = b""
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self.count or self.rest)

    def feed(self, eols: bytes) -> None:
        """Add ``eols``, bytes that are all ``\\r`` or ``\\n``."""
        if len(self.rest) >= _KEEP:
            self.dropped += eols.count(b"\n")
            return
        data = self.rest + eols
        if not self.unit:
            if data.startswith(b"\r\n"):
                self.unit = b"\r\n"
            elif data.startswith(b"\r"):
                if len(data) == 1:
                    self.rest = data
                    return
                self.unit = b"\r"
            else:
                self.unit = b"\n"
        folded = self._repeats(data)
        self.count += folded
        rest = data[folded * len(self.unit) :]
        self.dropped += rest.count(b"\n", _KEEP)
        self.rest = rest[:_KEEP]

    def _repeats(self, data: bytes) -> int:
        if self.unit == b"\r":
            run = len(data) - len(data.lstrip(b"\r"))
            return run - 1 if run else 0  # the last '\r' may begin a '\r\n'
        match = _REPEATS[self.unit].match(data)
        return (match.end() if match else 0) // len(self.unit)

    def head(self) -> bytes:
        """The first line end of the run (and a byte more, to tell ``\\r\\n`` from ``\\r``)."""
        return (self.unit * min(self.count, 2) + self.rest)[:2]

    def pieces(self, held: bytes, size: int) -> Iterator[bytes]:
        """``held`` and the run as kept, in pieces of about ``size`` bytes."""
        repeats = max(1, size // max(1, len(self.unit)))
        left, first = self.count, held
        while left > 0:
            take = min(left, repeats)
            yield first + self.unit * take
            left -= take
            first = b""
        if first or self.rest:
            yield first + self.rest


def _without_blank_tail(data: bytes, *, after_record: bool) -> bytes:
    """``data`` with the empty lines at its end removed; the last record keeps its line end.

    ``after_record``: the bytes passed on before ``data`` ended inside a record.
    """
    end = len(data)
    while end and data[end - 1] in _EOL:
        end -= 1
    if end == 0 and not after_record:
        return b""
    run = data[end : end + 2]
    if run.startswith(b"\r\n"):
        return data[: end + 2]
    return data[: end + len(run[:1])]


def _header_quotes(dialect: CsvDialect) -> Quotes:
    quote = dialect.quote.encode("utf-8")
    escape = (dialect.escape or dialect.quote).encode("utf-8")
    if len(quote) != 1 or len(escape) != 1:
        quote = escape = b"\x00"
    return Quotes(quote[0], escape[0])


def _record_end(data: bytes, state: Quotes) -> int | None:
    """The offset of the first line end outside quotes (the header's end), ``state`` carried
    from the bytes before; None if ``data`` has none, ``state`` then moved over all of it."""
    scanned = 0
    size = len(data)
    # The next of each line end, searched again only once passed: a block of '\n' and no '\r'
    # is then searched once, not once per line.
    newline, ret = data.find(b"\n"), data.find(b"\r")
    while True:
        at = min(newline if newline >= 0 else size, ret if ret >= 0 else size)
        if at == size:
            state.advance(data, scanned, size)
            return None
        state.advance(data, scanned, at)
        scanned = at
        if not state.inside:
            return at
        if at == newline:
            newline = data.find(b"\n", at + 1)
        else:
            ret = data.find(b"\r", at + 1)


def _csv_options(dialect: CsvDialect) -> dict[str, Any]:
    escape = dialect.escape or dialect.quote
    return {
        "delimiter": dialect.delimiter,
        "quotechar": dialect.quote,
        "escapechar": None if escape == dialect.quote else escape,
        "doublequote": escape == dialect.quote,
        "strict": True,
    }


def _walk(reader: Readable, dialect: CsvDialect, records: Records) -> None:
    """Feed ``records`` the file as COPY saw it, decoded; stop early once it has its answer."""
    framed = Framed(reader, dialect, block_size=_DIAGNOSE_BLOCK)
    decoder = codecs.getincrementaldecoder(python_codec(dialect.encoding))(errors="replace")
    for block in framed.blocks():
        records.feed(decoder.decode(block), final=False)
        if records.answered:
            return
    records.feed(decoder.decode(b"", final=True), final=True)
    records.end()


def locate_open_quote(reader: Readable, dialect: CsvDialect) -> int | None:
    """The first line of the record whose quoting goes wrong (an unterminated quoted value).

    PostgreSQL reports such a file at its end: a quote never closed swallows every line after
    it. Read strictly (a closing quote must be followed by a delimiter or a line end), the first
    record that breaks is where the stray quote is.
    """
    records = Records(dialect)
    _walk(reader, dialect, records)
    return records.broken


def record_line(reader: Readable, dialect: CsvDialect, record: int) -> int | None:
    """The first line of data record ``record`` (1-based, after the header if any)."""
    want = record - 1 + (1 if dialect.header else 0)
    records = Records(dialect, want=want)
    _walk(reader, dialect, records)
    exists = want < records.records + records.open
    return records.found if exists else None
