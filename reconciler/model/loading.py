"""Loading the schedules folder's files into validated documents and located findings.

``reading.load_folder`` (and tests, with bytes) call ``load_files``; the planner and ``reconcile
validate`` use its result. Each file is checked for size and UTF-8, parsed by ``model.parsing``
(positions, duplicate keys, limits, YAML 1.1 surprises), each document validated against
``model.specs`` with pydantic's errors retold by ``model.explaining``; then names are checked
across all files. Every finding of every file is reported in one pass, as ``path:line:col:
message``. Pure: bytes in, documents and findings out.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from reconciler.errors import Finding
from reconciler.model import specs
from reconciler.model.explaining import explain
from reconciler.model.parsing import (
    ParsedDocument,
    byte_position,
    locate,
    parse_documents,
    position_of,
)
from reconciler.model.scalars import excerpt

__all__ = ["MAX_FILE_BYTES", "Loaded", "LoadedDocument", "load_files"]

MAX_FILE_BYTES = 1024 * 1024  # larger files are reported, never read whole

_NOT_A_MAPPING = "a document must be a mapping with apiVersion, kind, metadata and spec"


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    """A valid document and where it was written (``source`` is relative to the folder)."""

    document: specs.ProjectDocument | specs.ScheduleDocument
    source: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Loaded:
    """The valid documents of a folder and every finding; apply only when ``ok``.

    ``documents`` holds each document that is valid on its own, even when another has findings.
    """

    documents: tuple[LoadedDocument, ...]
    findings: tuple[Finding, ...]
    files: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the folder is valid: no finding at all."""
        return not self.findings


_CACHED_FILES = 4096  # files whose parsed results are remembered
_HINTS = 20  # undeclared projects given a "did you mean" hint per load
_HINT_LENGTH = 255  # a longer name is no valid name, and not worth comparing


@dataclass(frozen=True, slots=True)
class _Declared:
    """What the cross-document checks need from one document, valid or not."""

    kind: str
    name: str
    display: str
    line: int
    column: int
    project: tuple[str, int, int] | None  # a schedule's spec.project and its position


def load_files(files: Iterable[tuple[str, bytes]], *, display_root: str = "") -> Loaded:
    """Validate every document of ``files`` (relative posix path, raw bytes).

    Findings name files as ``display_root`` joined with the relative path, so that the user sees
    ``schedules.d/sales.yaml:7:9: ...``.
    """
    documents: list[LoadedDocument] = []
    findings: dict[str, list[Finding]] = {}
    declared: list[_Declared] = []
    sources: list[str] = []
    for source, data in files:
        display = _display(display_root, source)
        sources.append(source)
        valid, found, identities = _load_file(source, display, data)
        documents += valid
        findings.setdefault(display, []).extend(found)
        declared += identities
    for finding in _cross_checks(declared):
        findings[finding.path].append(finding)
    ordered = [
        finding
        for found in findings.values()
        for finding in sorted(dict.fromkeys(found), key=lambda f: (f.line, f.column))
    ]
    return Loaded(tuple(documents), tuple(ordered), tuple(sources))


@functools.lru_cache(maxsize=_CACHED_FILES)
def _load_file(
    source: str, display: str, data: bytes
) -> tuple[tuple[LoadedDocument, ...], tuple[Finding, ...], tuple[_Declared, ...]]:
    """One file's valid documents, findings and declarations, remembered by content: the
    daemon reloads the whole folder on every change, and parses again only the files that
    changed."""
    found: list[Finding] = []
    documents: list[LoadedDocument] = []
    declared: list[_Declared] = []
    for parsed in _parse_file(display, data, found):
        loaded = _validate(parsed, source, display, found)
        if loaded is not None:
            documents.append(loaded)
        identity = _identity(parsed, display)
        if identity is not None:
            declared.append(identity)
    return tuple(documents), tuple(found), tuple(declared)


def _display(root: str, source: str) -> str:
    if not root or root == ".":
        return source
    return f"{root.rstrip('/')}/{source}"


def _parse_file(display: str, data: bytes, found: list[Finding]) -> list[ParsedDocument]:
    if len(data) > MAX_FILE_BYTES:
        limit = MAX_FILE_BYTES // (1024 * 1024)
        found.append(
            Finding(display, 0, 0, f"larger than {limit} MiB: split it into smaller files")
        )
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = byte_position(data, exc.start)
        byte = data[exc.start]
        found.append(
            Finding(display, line, column, f"not UTF-8 (byte 0x{byte:02x}): save the file as UTF-8")
        )
        return []
    parsed, problems = parse_documents(data, text)
    for doc in parsed:
        found.extend(Finding(display, p.line, p.column, p.message) for p in doc.problems)
    found.extend(Finding(display, p.line, p.column, p.message) for p in problems)
    return parsed


def _validate(
    doc: ParsedDocument, source: str, display: str, found: list[Finding]
) -> LoadedDocument | None:
    if not doc.complete:
        return None
    if not isinstance(doc.value, dict):
        found.append(Finding(display, doc.line, doc.column, f"{_NOT_A_MAPPING}, not {_kind(doc)}"))
        return None
    try:
        document = specs.document_adapter().validate_python(doc.value)
    except ValidationError as exc:
        # A position already flagged while parsing (ambiguous boolean, merge key) is explained
        # there; pydantic's view of the same value would only repeat it less helpfully.
        flagged = {(p.line, p.column) for p in doc.problems}
        for error in exc.errors(include_url=False):
            explanation = explain(error)
            where = locate(doc, explanation.path)
            line, column = where.line, where.column
            if explanation.at_key or isinstance(where.node, dict | list):
                line, column = where.key_line, where.key_column
            if (line, column) not in flagged:
                found.append(Finding(display, line, column, explanation.message))
        return None
    if doc.problems:
        return None
    return LoadedDocument(document, source, doc.line, doc.column)


def _kind(doc: ParsedDocument) -> str:
    # Never the value itself: a file that is not YAML (a symlinked .env) is one long value.
    if isinstance(doc.value, list):
        return "a list"
    return "a single value (is this a YAML file?)"


def _identity(doc: ParsedDocument, display: str) -> _Declared | None:
    value = doc.value
    if not isinstance(value, dict):
        return None
    kind, metadata = value.get("kind"), value.get("metadata")
    if kind not in ("Project", "Schedule") or not isinstance(metadata, dict):
        return None
    name = metadata.get("name")
    if not isinstance(name, str):
        return None
    line, column = position_of(doc, metadata, "name")
    project = None
    spec = value.get("spec")
    if kind == "Schedule" and isinstance(spec, dict) and isinstance(spec.get("project"), str):
        project = (spec["project"], *position_of(doc, spec, "project"))
    return _Declared(kind, name, display, line, column, project)


def _cross_checks(declared: list[_Declared]) -> list[Finding]:
    """Names unique per kind; every schedule's project declared (``external: true`` counts)."""
    findings: list[Finding] = []
    first: dict[tuple[str, str], _Declared] = {}
    for item in declared:
        earlier = first.setdefault((item.kind, item.name), item)
        if earlier is not item:
            findings.append(
                Finding(
                    item.display,
                    item.line,
                    item.column,
                    f"metadata.name: {item.kind} {excerpt(item.name)} is already declared at "
                    f"{earlier.display}:{earlier.line}:{earlier.column}; "
                    "names must be unique per kind",
                )
            )
    projects = {name for kind, name in first if kind == "Project"}
    candidates = sorted(projects)
    hints = _HINTS
    for item in declared:
        if item.project is None or item.project[0] in projects:
            continue
        name, line, column = item.project
        # Each hint compares the name with every project: a few, or a folder of thousands of
        # mistyped schedules would cost the square of its size.
        close = []
        if hints and len(name) <= _HINT_LENGTH:
            hints -= 1
            close = difflib.get_close_matches(name, candidates, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        findings.append(
            Finding(
                item.display,
                line,
                column,
                f"spec.project: project {excerpt(name)} is not declared in this folder{hint}; "
                "add a Project document, or one with 'external: true' if it is managed elsewhere",
            )
        )
    return findings
