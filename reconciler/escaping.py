"""One escaping function per output kind, for every value that came from outside. Pure.

File names (local and SFTP), schedule and project names, and messages from servers and
PostgreSQL may hold anything: a newline that fakes a line of output or starts a GitHub workflow
command (``::error::``), an ESC sequence that recolours or rewrites a terminal, Markdown or HTML
that reshapes a pull-request comment. Whatever prints such a value prints it through one of these:

- ``terminal``: control characters (C0, DEL, C1, line separators and bidirectional overrides)
  as visible escapes (``\\n``, ``\\x1b``, ``\\u202e``); for the terminal, console logs and any
  plain-text output a CI log may parse;
- ``workflow_message`` and ``workflow_property``: the encodings GitHub documents for workflow
  commands (``%``, CR, LF; and ``:`` and ``,`` in a property), other controls as visible escapes;
- ``markdown``, ``markdown_code`` and ``fence``: text, an inline code span and a code fence of
  a Markdown comment, markup and HTML inert, never a raw newline (safe in a table cell);
- JSON needs nothing here: ``json.dumps`` escapes every control character.

``capped`` bounds an echo of input (a 100,000-column header in an error) where it is printed.
The errors, the model's renderers, the commands and the logs use it; it imports nothing.
"""

from __future__ import annotations

import re

__all__ = [
    "TEXT_LIMIT",
    "capped",
    "fence",
    "markdown",
    "markdown_code",
    "terminal",
    "workflow_message",
    "workflow_property",
]

TEXT_LIMIT = 2_000  # characters of one message shown; the rest is counted, not printed

_CONTROLS = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{_CONTROLS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MARKUP = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _controls_but(keep: str) -> re.Pattern[str]:
    return re.compile(f"(?![{keep}])[{_CONTROLS}]")


_BUT_NEWLINE = _controls_but("\n")
_BUT_LINE_ENDS = _controls_but("\r\n")


def terminal(text: str, *, lines: bool = False) -> str:
    """``text`` with every control character shown as a visible escape, on one line; with
    ``lines``, a text of our own that spans lines (a traceback, a list of findings) keeps its
    line feeds, every other control escaped."""
    return (_BUT_NEWLINE if lines else _CONTROL).sub(_visible, text)


def capped(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` cut at ``limit`` characters, saying how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def workflow_message(text: str) -> str:
    """A GitHub workflow command's message: ``%``, CR and LF encoded, other controls visible."""
    text = _BUT_LINE_ENDS.sub(_visible, text)
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def workflow_property(text: str) -> str:
    """A GitHub workflow command's property value (``file=``, ``title=``): ``:`` and ``,`` too."""
    return workflow_message(text).replace(":", "%3A").replace(",", "%2C")


def markdown(text: str) -> str:
    """Text in a Markdown paragraph or table cell: markup escaped, HTML inert, one line."""
    text = terminal(text)
    text = "".join(_HTML.get(char, char) for char in text)
    return _MARKUP.sub(r"\\\1", text)


def markdown_code(text: str) -> str:
    """An inline code span of ``text``: delimited by more backticks than any run in it."""
    text = terminal(text)
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith(("`", " ")) or text.endswith(("`", " ")) else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text``, so it cannot close early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)
