"""Offline commands: ``validate`` and ``schema``; neither touches a database.

``reconciler.cli`` calls these by name. ``validate`` is what CI runs on every pull request, so it
imports only the loader (YAML and pydantic), never psycopg, paramiko, APScheduler or watchfiles.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from reconciler.commands.arguments import NoArguments
from reconciler.errors import EXIT_ERROR, EXIT_OK
from reconciler.escaping import capped, workflow_message, workflow_property
from reconciler.settings import Settings

if TYPE_CHECKING:
    from reconciler.errors import Finding
    from reconciler.model.loading import Loaded

__all__ = ["schema", "validate"]


def validate(arguments: NoArguments, settings: Settings) -> int:
    """Check every document in the folder; print each finding and a summary; 1 when invalid."""
    from reconciler.commands.output import emit_json, paint
    from reconciler.reading import load_folder

    folder = settings.schedules_dir
    loaded = load_folder(folder)
    if settings.output == "json":
        emit_json("ValidationResult", _result(loaded, folder.as_posix()))
        return EXIT_OK if loaded.ok else EXIT_ERROR
    if settings.output == "github":
        out = [_annotation(finding) for finding in loaded.findings]
    else:
        out = [f"{capped(str(finding))}\n" for finding in loaded.findings]
    if loaded.ok:
        files = _plural(len(loaded.files), "file")
        summary = f"{files}, {_plural(len(loaded.documents), 'document')}: valid"
        out.append(paint(summary, "green", enabled=settings.color) + "\n")
    else:
        bad = len({finding.path for finding in loaded.findings})
        summary = f"{_plural(len(loaded.findings), 'problem')} in {_plural(bad, 'file')}"
        out.append(paint(summary, "red", enabled=settings.color) + "\n")
    sys.stdout.write("".join(out))
    return EXIT_OK if loaded.ok else EXIT_ERROR


def _result(loaded: Loaded, root: str) -> dict[str, Any]:
    return {
        "valid": loaded.ok,
        "root": root,
        "files": list(loaded.files),
        "documents": [
            {
                "kind": item.document.kind,
                "name": item.document.metadata.name,
                "source": item.source,
                "line": item.line,
            }
            for item in loaded.documents
        ],
        "findings": [
            {"path": f.path, "line": f.line, "column": f.column, "message": f.message}
            for f in loaded.findings
        ],
    }


def _annotation(finding: Finding) -> str:
    """``::error file=...,line=...,col=...::message``, shown on the pull request's diff."""
    where = f"file={workflow_property(finding.path)}"
    if finding.line:
        where += f",line={finding.line}"
    if finding.column:
        where += f",col={finding.column}"
    message = workflow_message(capped(finding.message))
    return f"::error {where},title=reconcile validate::{message}\n"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def schema(arguments: NoArguments, settings: Settings) -> int:
    """Print the documents' JSON Schema for editors."""
    from reconciler.model.specs import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
    return 0
