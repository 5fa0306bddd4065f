"""Writing command results: plain text for people, versioned JSON documents for machines.

Every ``--output json`` document carries ``apiVersion`` and ``kind`` so that consumers can rely on
its shape; fields are only ever added within one version. stdout holds one document per run: the
command's own, or, when the command failed before printing one, the ``Error`` document that
``reconciler.cli`` prints through ``emit_error`` (a plan printed and then refused keeps its plan).
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["OUTPUT_VERSION", "documents_printed", "emit_error", "emit_json", "paint"]

OUTPUT_VERSION = "reconciler/v1"
_COLORS = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}
_printed = 0  # documents this process has printed on stdout


def emit_json(kind: str, body: dict[str, Any]) -> None:
    """Print one versioned JSON document on stdout."""
    global _printed  # noqa: PLW0603  # one process, one stdout: the count is a fact about both
    document = {"apiVersion": OUTPUT_VERSION, "kind": kind, **body}
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    _printed += 1


def documents_printed() -> int:
    """How many documents this process has printed; the CLI compares it before and after."""
    return _printed


def emit_error(exc: BaseException, message: str, exit_code: int) -> None:
    """Print the ``Error`` document of a failed command.

    ``retryable`` says whether running the command again may help; ``findings`` lists each problem
    of an invalid folder, in the ``ValidationResult`` shape (empty for other errors).
    """
    findings = getattr(exc, "findings", ())
    emit_json(
        "Error",
        {
            "message": message,
            "exit_code": exit_code,
            "retryable": bool(getattr(exc, "retryable", False)),
            "findings": [
                {"path": f.path, "line": f.line, "column": f.column, "message": f.message}
                for f in findings
            ],
        },
    )


def paint(text: str, color: str, *, enabled: bool) -> str:
    """``text`` in ``color`` when colour is enabled: ``Settings.color``, on for a terminal unless
    NO_COLOR is set, TERM is dumb or --no-color is given."""
    return f"\x1b[{_COLORS[color]}m{text}\x1b[0m" if enabled else text
