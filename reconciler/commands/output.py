"""Writing command results: plain text for people, versioned JSON documents for machines.

Every ``--output json`` document carries ``apiVersion`` and ``kind`` so that consumers can rely on
its shape; fields are only ever added within one version.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["OUTPUT_VERSION", "emit_json", "paint"]

OUTPUT_VERSION = "reconciler/v1"
_COLORS = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}


def emit_json(kind: str, body: dict[str, Any]) -> None:
    """Print one versioned JSON document on stdout."""
    document = {"apiVersion": OUTPUT_VERSION, "kind": kind, **body}
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def paint(text: str, color: str, *, enabled: bool) -> str:
    """``text`` in ``color`` when colour is enabled (a terminal, no NO_COLOR, no --no-color)."""
    return f"\x1b[{_COLORS[color]}m{text}\x1b[0m" if enabled else text
