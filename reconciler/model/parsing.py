"""YAML bytes to plain values that remember where every key and value was written.

``model.loading`` calls ``parse_documents`` once per file. It reads PyYAML's event stream (the C
parser, which is not recursive) and builds dicts, lists and scalars itself, in a loop, so that it
can locate every key and value, reject duplicate keys, bound nesting and alias expansion (a
"billion laughs" document costs microseconds, not memory), and resolve scalars the YAML 1.2 way
while flagging the YAML 1.1 readings that surprise people (``on`` as true, ``06:00`` as 360).

Choices, documented for users in the README:

- Mapping keys are always text (so ``null: ""`` in ``csv`` means the key ``null``).
- Plain ``true``/``false`` in any case are booleans; ``null``, ``~`` and nothing are null; decimal,
  ``0x`` and ``0o`` integers and decimal floats are numbers; quoted and block scalars are text.
- Plain ``yes``/``no``/``on``/``off``/``y``/``n``, base-60 numbers (``1:30``), numbers with
  underscores and integers with a leading zero (``0755``) are problems: YAML 1.1 tools read them
  differently, so the user is asked to quote them or write them plainly.
- Merge keys (``<<``), custom tags and non-text keys are problems.
- A NUL character (only a double-quoted ``"\\0"`` can write one) is a problem anywhere, keys
  included: PostgreSQL text and JSONB cannot store it.

Pure: bytes in, values and problems out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml

from reconciler.model.scalars import NUMBER_START, excerpt, resolve

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_RESUMES",
    "Location",
    "ParsedDocument",
    "Problem",
    "locate",
    "parse_documents",
    "position_of",
]

MAX_DEPTH = 64  # far deeper than any document needs; bounds every walk over the values
MAX_NODES = 10_000  # per document, alias expansions included

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_RESUMES = 20  # syntax errors a file is read past; a file with more is reported up to there
_NO_KEY: Any = object()  # a mapping waiting for its next key (keys may be "", so not None)
_ALIAS_HINT = "a value starting with '*' must be quoted (e.g. cron: \"*/5 * * * *\")"
_STAR = re.compile(r"(?:^|[\s:\[\]{},-])(\*)")

_Scalar = yaml.ScalarEvent
_MapStart = yaml.MappingStartEvent
_MapEnd = yaml.MappingEndEvent
_SeqStart = yaml.SequenceStartEvent
_SeqEnd = yaml.SequenceEndEvent
_Alias = yaml.AliasEvent
_DocStart = yaml.DocumentStartEvent
_DocEnd = yaml.DocumentEndEvent
_StreamEnd = yaml.StreamEndEvent
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels; the rest of the file was not read"
_TOO_MANY = (
    f"more than {MAX_NODES} values (aliases counted as copies): "
    "split the document or remove the aliases"
)
_NO_MERGE = "merge keys ('<<') are not supported: write the keys out"
_NUL = "contains a NUL character ('\\0'), which PostgreSQL cannot store: remove it"
_CONTAINER_TAGS = frozenset({None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


@dataclass(frozen=True, slots=True)
class Problem:
    """A finding without its file: 1-based line and column (0, 0 for the whole file)."""

    line: int
    column: int
    message: str


# id(container) -> where its entries are: per key (key line, key column, value line, value column),
# per index (value line, value column), 0-based as PyYAML counts. Keyed by id: the values live
# as long as the document.
Positions = dict[int, Any]


@dataclass(slots=True)
class ParsedDocument:
    """One document's root value, where it starts, where each entry is, and what was wrong."""

    value: Any = None
    line: int = 0
    column: int = 0
    positions: Positions = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    complete: bool = True  # False when building stopped early: the value is partial


def parse_documents(data: bytes, text: str) -> tuple[list[ParsedDocument], list[Problem]]:
    """The non-empty documents of one file, and the problems that concern the file itself.

    ``data`` is the raw UTF-8 (already checked); ``text`` the same decoded, used only to locate
    problems precisely. A syntax error ends its document: the one it interrupted keeps its
    problems but is marked incomplete, and reading goes on at the next document start (a line
    ``---``), so that later documents are still checked (at most ``MAX_RESUMES`` times a file).
    """
    documents, problems = _parse_part(data, text)
    found = problems  # the last part's problems, counted from the part's first line
    line_offset = byte_offset = char_offset = 0
    for _ in range(MAX_RESUMES):
        if not found or found[-1].line == 0:
            break  # read to the end, or a problem with no place to resume after
        start = _next_document(text, char_offset, found[-1].line)
        if start is None:
            break
        skipped = text[char_offset:start]
        line_offset += skipped.count("\n")
        byte_offset += len(skipped.encode("utf-8"))
        char_offset = start
        more, found = _parse_part(data[byte_offset:], text[char_offset:])
        documents += [_shifted(doc, line_offset) for doc in more]
        problems += [_moved(problem, line_offset) for problem in found]
    return documents, problems


# A document start: '---' at the start of a line, alone or before a space.
_DOC_START = re.compile(r"^---(?=[ \t]|\r?$)", re.MULTILINE)


def _next_document(text: str, start: int, line: int) -> int | None:
    """Where the first document start at or after 1-based ``line`` of ``text[start:]`` begins
    (the line of a syntax error may be the next document's ``---``), past ``start``."""
    position = start
    for _ in range(line - 1):
        newline = text.find("\n", position)
        if newline < 0:
            return None
        position = newline + 1
    found = _DOC_START.search(text, max(position, start + 1))
    return found.start() if found else None


def _moved(problem: Problem, lines: int) -> Problem:
    return Problem(problem.line + lines, problem.column, problem.message)


def _shifted(doc: ParsedDocument, lines: int) -> ParsedDocument:
    """``doc`` parsed from a later part of its file, its places counted from the file's start."""
    doc.line += lines
    doc.problems[:] = [_moved(p, lines) for p in doc.problems]
    for key, table in doc.positions.items():
        if isinstance(table, dict):
            doc.positions[key] = {
                k: (kl + lines, kc, vl + lines, vc) for k, (kl, kc, vl, vc) in table.items()
            }
        else:
            doc.positions[key] = [(vl + lines, vc) for vl, vc in table]
    return doc


def _parse_part(data: bytes, text: str) -> tuple[list[ParsedDocument], list[Problem]]:
    """``parse_documents`` up to the first syntax error."""
    loader = _LOADER(data)
    documents: list[ParsedDocument] = []
    try:
        _build(loader.get_event, documents)
    except yaml.MarkedYAMLError as exc:
        return _interrupted(documents), [_syntax_problem(exc, text)]
    except yaml.reader.ReaderError as exc:
        line, column = byte_position(data, exc.position)
        return _interrupted(documents), [Problem(line, column, f"invalid YAML: {exc.reason}")]
    finally:
        loader.dispose()
    return documents, []


def _interrupted(documents: list[ParsedDocument]) -> list[ParsedDocument]:
    """Keep the interrupted document if it has anything: its name still counts across files."""
    last = documents[-1] if documents else None
    if last is not None and not last.complete and last.value is None and not last.problems:
        documents.pop()
    return documents


def _build(get_event: Any, documents: list[ParsedDocument]) -> None:  # noqa: PLR0912, PLR0915
    """Build documents from events, appending each as it starts.

    One loop with its state in local variables, scalars first, positions kept 0-based as PyYAML
    gives them: this runs for every event of every file, and calls or look-ups per event would
    double the cost of loading a folder.
    A document is ``complete`` only once its end is reached without a limit being hit.
    """
    doc = ParsedDocument()
    problems = doc.problems
    positions = doc.positions
    stack: list[tuple[Any, Any, bool, Any, int, int, int, str | None]] = []
    anchors: dict[str, tuple[Any, int]] = {}
    container: Any = None
    table: Any = None
    is_map = False
    key: Any = _NO_KEY
    key_line = key_col = 0
    start = count = 0
    anchor: str | None = None
    stopped = True  # until the first document starts, and after a limit is hit
    broken = False
    while True:
        event = get_event()
        kind = type(event)
        if stopped:
            if kind is _DocStart:
                doc = ParsedDocument(complete=False)
                problems, positions = doc.problems, doc.positions
                documents.append(doc)
                stack, anchors, anchor = [], {}, None
                container, table, is_map, key, count = None, None, False, _NO_KEY, 0
                stopped = broken = False
            elif kind is _DocEnd:  # of a document whose building stopped at a limit
                doc.complete = not broken
                if doc.value is None and not problems:
                    documents.pop()
            elif kind is _StreamEnd:
                return
            continue
        if kind is _Scalar:
            count += 1
            text = event.value
            if event.style == '"' and "\x00" in text:  # no other style can write one
                problems.append(_problem(event, _NUL))
            if is_map and key is _NO_KEY:
                if text in container:
                    problems.append(_duplicate(text, event, table[text][0]))
                elif text == "<<" and not event.style:
                    problems.append(_problem(event, _NO_MERGE))
                mark = event.start_mark
                key, key_line, key_col = text, mark.line, mark.column
                continue
            tag = event.tag
            if tag is None and (event.style or (len(text) > 5 and text[0] not in NUMBER_START)):
                value: Any = text  # the common case: text that cannot mean anything else
            else:
                value, problem = resolve(text, event.style, tag, key)
                if problem:
                    problems.append(_problem(event, problem))
            if event.anchor:
                anchors[event.anchor] = (value, 1)
        elif kind is _MapEnd or kind is _SeqEnd:
            if anchor:
                anchors[anchor] = (container, count - start)
            container, table, is_map, key, key_line, key_col, start, anchor = stack.pop()
            continue
        elif kind is _MapStart or kind is _SeqStart:
            if is_map and key is _NO_KEY:
                problems.append(_problem(event, "a key must be plain text, not a mapping or list"))
                broken = stopped = True
                continue
            if len(stack) >= MAX_DEPTH:
                # libyaml slows down with depth (quadratically): stop reading this file here.
                problems.append(_problem(event, _TOO_DEEP))
                return
            if event.tag not in _CONTAINER_TAGS:
                problems.append(_problem(event, f"unsupported tag {excerpt(event.tag)}: remove it"))
            count += 1
            value = {} if kind is _MapStart else []
        elif kind is _Alias:
            anchored = anchors.get(event.anchor)
            if anchored is None or (is_map and key is _NO_KEY):
                message = (
                    f"unknown alias {excerpt('*' + event.anchor)}: {_ALIAS_HINT}"
                    if anchored is None
                    else "a key must be plain text, not an alias"
                )
                problems.append(_problem(event, message))
                broken = stopped = True
                continue
            value, size = anchored
            count += size
        elif kind is _DocEnd:
            doc.complete = stopped = True
            if doc.value is None and not problems:
                documents.pop()
            continue
        else:
            continue
        if count > MAX_NODES:
            problems.append(_problem(event, _TOO_MANY))
            broken = stopped = True
            continue
        # Attach the value to its parent (or make it the root), remembering where it was written.
        mark = event.start_mark
        if container is None:
            doc.value, doc.line, doc.column = value, mark.line + 1, mark.column + 1
        elif is_map:
            container[key] = value
            table[key] = (key_line, key_col, mark.line, mark.column)
            key = _NO_KEY
        else:
            container.append(value)
            table.append((mark.line, mark.column))
        if kind is _MapStart or kind is _SeqStart:
            stack.append((container, table, is_map, key, key_line, key_col, start, anchor))
            container, is_map, key, start, anchor = (
                value,
                kind is _MapStart,
                _NO_KEY,
                count - 1,
                event.anchor,
            )
            table = {} if is_map else []
            positions[id(value)] = table


def _problem(event: Any, message: str) -> Problem:
    mark = event.start_mark
    return Problem(mark.line + 1, mark.column + 1, message)


def _duplicate(key: str, event: Any, first: int) -> Problem:
    return _problem(event, f"duplicate key {excerpt(key)} (first at line {first + 1}): keep one")


def byte_position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of a byte offset."""
    offset = max(0, min(offset, len(data)))
    start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


# libyaml's wording -> what to do about it. Its own nesting limit (0.2.5+) can trip before ours.
_ADVICE = (
    ("maximum nesting depth", _TOO_DEEP),
    ("tab character", "indent with spaces, not tabs"),
    (
        "mapping values are not allowed in this context",
        "unexpected ':': check the indentation, or quote a value containing ': '",
    ),
)


def _syntax_problem(exc: yaml.MarkedYAMLError, text: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
    problem = exc.problem or "unreadable"
    context = exc.context or ""
    if "alias" in context or "alias" in problem:
        mark = exc.context_mark or mark
        if mark is not None:
            line = mark.line + 1
            star = _STAR.search(_line_of(text, line))
            column = star.start(1) + 1 if star else mark.column + 1
        return Problem(line, column, _ALIAS_HINT)
    if problem == "found character that cannot start any token" and line:
        char = _line_of(text, line)[column - 1 : column]
        if char == "\t":
            return Problem(line, column, "indent with spaces, not tabs")
        example = ' (e.g. cron: "@daily")' if char == "@" else ""
        return Problem(line, column, f"a value starting with {char!r} must be quoted{example}")
    for fragment, advice in _ADVICE:
        if fragment in problem:
            return Problem(line, column, advice)
    where = ""
    if context and exc.context_mark is not None and exc.context_mark.line + 1 != line:
        where = f" ({context} started at line {exc.context_mark.line + 1})"
    return Problem(line, column, f"invalid YAML: {problem}{where}")


def _line_of(text: str, line: int) -> str:
    lines = text.split("\n")
    return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""


class Location(NamedTuple):
    """Where a path is written; the nearest existing parent's place when ``found`` is false."""

    key_line: int
    key_column: int
    line: int  # of the value
    column: int
    node: Any  # the value there (None when not found)
    found: bool


def locate(doc: ParsedDocument, path: tuple[str | int, ...]) -> Location:
    """Where ``path`` (keys and list indexes from the root) is written in ``doc``."""
    node = doc.value
    key_line, key_col = value_line, value_col = doc.line, doc.column
    for part in path:
        table = doc.positions.get(id(node))
        if table is None:
            return Location(key_line, key_col, value_line, value_col, None, False)
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            key_line, key_col, value_line, value_col = table[part]
            key_line, key_col, value_line, value_col = (
                key_line + 1,
                key_col + 1,
                value_line + 1,
                value_col + 1,
            )
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            key_line = value_line = table[part][0] + 1
            key_col = value_col = table[part][1] + 1
        else:
            return Location(key_line, key_col, value_line, value_col, None, False)
        node = node[part]
    return Location(key_line, key_col, value_line, value_col, node, True)


def position_of(doc: ParsedDocument, mapping: dict[str, Any], key: str) -> tuple[int, int]:
    """Line and column of the value of ``key`` in ``mapping``, a mapping of ``doc``."""
    _, _, line, column = doc.positions[id(mapping)][key]
    return line + 1, column + 1
