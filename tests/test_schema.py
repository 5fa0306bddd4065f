"""The JSON Schema stays in step with the models, the checked-in file and the example documents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler.model.parsing import parse_documents
from reconciler.model.specs import json_schema

REPO = Path(__file__).parent.parent
EXAMPLES = sorted((REPO / "schedules.d").rglob("*.yaml"))
CHECKED_IN = REPO / "schema" / "reconciler-v1.json"


@pytest.fixture(scope="module")
def printed() -> str:
    """What ``reconcile schema`` prints."""
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    """A validator for the checked-in schema (the one editors use)."""
    schema = json.loads(CHECKED_IN.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def documents(path: Path) -> list[Any]:
    """The documents of one file, parsed the way the loader parses them."""
    data = path.read_bytes()
    parsed, problems = parse_documents(data, data.decode())
    assert not problems
    return [doc.value for doc in parsed]


def test_printed_schema_is_the_models_schema(printed: str) -> None:
    """``reconcile schema`` prints exactly the models' JSON Schema."""
    assert json.loads(printed) == json_schema()


def test_checked_in_schema_is_what_reconcile_schema_prints(printed: str) -> None:
    """schema/reconciler-v1.json is byte for byte the output (regenerate it when this fails)."""
    assert CHECKED_IN.read_text(encoding="utf-8") == printed, (
        "run: python -m reconciler schema > schema/reconciler-v1.json"
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_against_the_schema(
    path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    """Every example document is valid for an editor using the checked-in schema."""
    docs = documents(path)
    assert docs
    for doc in docs:
        validator.validate(doc)


def test_examples_point_editors_at_the_schema() -> None:
    """Each example file starts with the yaml-language-server modeline naming the schema."""
    assert EXAMPLES
    for path in EXAMPLES:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../schema/reconciler-v1.json"


SCHEDULE: dict[str, Any] = {
    "apiVersion": "reconciler/v1",
    "kind": "Schedule",
    "metadata": {"name": "s"},
    "spec": {"project": "p", "interval": "2h", "misfire_grace": 300},
}
REJECTED = [
    ("unknown key", {"spec": {**SCHEDULE["spec"], "crn": "x"}}),
    ("wrong kind", {"kind": "Shedule"}),
    ("wrong type", {"spec": {**SCHEDULE["spec"], "enabled": "yes"}}),
    ("bad duration", {"spec": {**SCHEDULE["spec"], "interval": "two hours"}}),
    ("duration past integer", {"spec": {**SCHEDULE["spec"], "misfire_grace": 2147483648}}),
    ("duration in other digits", {"spec": {**SCHEDULE["spec"], "interval": "\u0663h"}}),
]


@pytest.mark.parametrize("change", [c[1] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_schema_rejects_what_the_models_reject(
    change: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    """The schema is not merely permissive: the mistakes an editor should flag are flagged."""
    validator.validate(SCHEDULE)
    assert not validator.is_valid({**SCHEDULE, **change})
