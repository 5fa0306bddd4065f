"""Offline commands: ``validate``, ``next`` and ``schema``; none of them touches a database."""

from __future__ import annotations

import argparse
import json
import sys

from reconciler.settings import Settings

__all__ = ["schema"]


def schema(args: argparse.Namespace, settings: Settings) -> int:
    """Print the documents' JSON Schema for editors."""
    from reconciler.model.specs import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
    return 0
