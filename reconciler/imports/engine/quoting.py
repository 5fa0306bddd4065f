r"""How PostgreSQL's CSV quoting splits a stream into records, followed piece by piece.

``imports.engine.framing`` keeps one of each: ``Quotes`` tells, in flight over the raw bytes,
whether a ``\.`` line lies inside a quoted value; ``Records``, on the error path over the
decoded text, on which line each record starts and where a stray quote breaks one. Both carry
their state from one piece to the next and hold no value, so neither a block boundary nor a
value's length changes what they find. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.model.specs import CsvDialect

__all__ = ["Quotes", "Records"]


class Quotes:
    """Whether a position of the stream lies inside a quoted value, carried across blocks."""

    def __init__(self, quote: int, escape: int) -> None:
        self._quote, self._escape = quote, escape
        self._parity = quote == escape  # then the quote is a toggle: counting them is enough
        self._count = 0
        self.inside = False
        self._escaped = False  # an escape inside quotes was the last byte: the next is literal

    def advance(self, data: bytes, start: int, end: int) -> None:
        """Move the state over ``data[start:end]``."""
        if self._parity:
            self._count += data.count(self._quote, start, end)
            self.inside = bool(self._count & 1)
            return
        # A distinct escape only matters inside quotes, before a quote or another escape.
        quote, escape, i = self._quote, self._escape, start
        while i < end:
            if self._escaped:
                self._escaped = False
                if data[i] in (quote, escape):
                    i += 1
                    continue
            q = data.find(quote, i, end)
            e = data.find(escape, i, end) if self.inside else -1
            if q < 0 and e < 0:
                return
            if e >= 0 and (q < 0 or e < q):
                self._escaped = True
                i = e + 1
            else:
                self.inside = not self.inside
                i = q + 1

    def copy(self) -> Quotes:
        twin = Quotes(self._quote, self._escape)
        twin._count, twin.inside, twin._escaped = self._count, self.inside, self._escaped
        return twin


class Records:
    """Where the records of decoded CSV text start, and where a stray quote breaks one.

    Records are split as PostgreSQL splits them: a line end outside quotes ends one; a quote
    character opens a quoted section wherever it stands; inside, a distinct escape character
    makes a following quote or escape literal, and a doubled quote is literal when the quote is
    its own escape. Read strictly on top, a closing quote must be followed by the delimiter, a
    line end or the end of the data: the first record where it is not holds the stray quote.

    No value is kept, so no value is too long. From outside quotes one regular expression match
    takes the stretch where quoting is plain (``_plain_stretch``); from where it stops, the text
    is searched for the next quote (inside quotes, or escape) character with ``str`` methods,
    counting the line ends in between. No character is read more than twice: time stays linear
    and memory one chunk, whatever a value's length. ``\\r\\n``, ``\\n`` and a lone ``\\r``
    each end one line, as an editor counts them.
    """

    def __init__(self, dialect: CsvDialect, *, want: int | None = None) -> None:
        self._quote, self._delimiter = dialect.quote, dialect.delimiter
        self._escape = dialect.escape or dialect.quote
        self._special = re.compile(f"[{re.escape(self._quote + self._escape)}]")
        self._lines = _plain_stretch(dialect)
        self._want = want  # the record (0-based, the header included) whose first line is sought
        self.found = 1 if want == 0 else None
        self.line = 1  # the line of the next character
        self.first = 1  # the first line of the record being read
        self.records = 0  # records ended so far
        self.inside = False
        self.open = False  # a character was read since the last record ended
        self.broken: int | None = None  # the first line of the first record whose quoting breaks
        self._carry = ""

    def feed(self, text: str, *, final: bool) -> None:
        """Move over ``text``; with ``final`` it is the end of the data."""
        s, pos = self._carry + text, 0
        self._carry = ""
        n = len(s)
        # A '\r' at the end may begin a '\r\n' that this text does not hold yet.
        whole = n - 1 if not final and s.endswith("\r") else n
        while pos < n:
            if self.inside:
                hit = self._special.search(s, pos)
                at = hit.start() if hit else -1
            else:
                if lines := self._lines.match(s, pos, whole):
                    self._ends(s, pos, lines.end())
                    pos = lines.end()
                at = s.find(self._quote, pos)
            end = n if at < 0 else at
            if at < 0 and not final and s.endswith("\r", pos, end):
                end -= 1  # a '\n' may follow in the next chunk: one line end, not two
            self._ends(s, pos, end)
            if at < 0:
                self._carry = s[end:]
                return
            if at + 1 == n and not final:
                self._carry = s[at:]  # what the character means depends on the next one
                return
            pos = self._step(s[at], s[at + 1 : at + 2]) + at

    def _step(self, char: str, after: str) -> int:
        """Take a quote or escape character followed by ``after``; how many characters it used."""
        self.open = True
        if not self.inside:
            self.inside = True
            return 1
        if char == self._escape and after and after in (self._quote, self._escape):
            return 2
        if char != self._quote:
            return 1  # an escape before anything else is itself
        self.inside = False
        if after not in ("", "\r", "\n", self._delimiter) and self.broken is None:
            self.broken = self.first
        return 1

    def _ends(self, s: str, start: int, end: int) -> None:
        """Count the line ends of ``s[start:end]``; outside quotes each one ends a record."""
        if start == end:
            return
        ends = s.count("\n", start, end) + s.count("\r", start, end) - s.count("\r\n", start, end)
        if self.inside:
            self.line += ends
            return
        if ends:
            want = self._want
            if want is not None and self.records < want <= self.records + ends:
                self.found = self.line + want - self.records
            self.records += ends
            self.line += ends
            self.first = self.line
            self.open = max(s.rfind("\n", start, end), s.rfind("\r", start, end)) + 1 < end
        else:
            self.open = True

    @property
    def answered(self) -> bool:
        """Whether the rest of the data can change the answer no more."""
        if self._want is None:
            return self.broken is not None
        return self.found is not None and self.records > self._want

    def end(self) -> None:
        """The data ended: a quote still open breaks the record it began in."""
        if self.inside and self.broken is None:
            self.broken = self.first


def _plain_stretch(dialect: CsvDialect) -> re.Pattern[str]:
    """From outside quotes, as far as quoting is plain: to the first quote that does not close
    on its line, or closes before anything but a delimiter or a line end.

    ``Records`` takes that stretch in one match, in the regular expression engine's loop, and
    walks quote by quote only from there; the next match starts where the walk leaves off, so
    each character is read at most twice.
    """
    q, e, d = (
        re.escape(c) for c in (dialect.quote, dialect.escape or dialect.quote, dialect.delimiter)
    )
    if q == e:  # a doubled quote closes one quoted section and opens the next
        quoted, after = f"[^{q}\\r\\n]*+", f"[{q}{d}\\r\\n]"
    else:
        quoted, after = f"(?:[^{q}{e}\\r\\n]++|{e}[{q}{e}]|{e})*+", f"[{d}\\r\\n]"
    record = f"(?:[^{q}\\r\\n]++|{q}{quoted}{q}(?={after}))*+"
    return re.compile(f"(?:{record}(?:\\r\\n|[\\r\\n]))*+{record}")
