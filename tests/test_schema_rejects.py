"""The JSON Schema refuses what ``reconcile validate`` refuses, wherever JSON Schema can say it.

Every invalid example of tests/test_loading.py's tables, and a table of our own, is run through
``reconcile validate`` (which must refuse it) and through the checked-in schema: the schema must
refuse it too unless it is listed in ``BEYOND_THE_SCHEMA`` with the reason. The list is exact: a
case listed there that the schema catches fails as well, so the list shrinks as the schema grows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler.cli import main
from reconciler.errors import EXIT_ERROR
from reconciler.model.parsing import parse_documents
from tests.test_loading import (
    AT_THE_LIMITS,
    CRON,
    DATABASE_REJECTS,
    FAILURES,
    PROJECT,
    SECRETS,
    VALID,
    project,
    schedule,
)

SCHEMA = json.loads((Path(__file__).parent.parent / "schema" / "reconciler-v1.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def sftp(more: str = "") -> str:
    """A project's ``sftp`` line with a valid password reference, and ``more`` keys."""
    return "  sftp: {host: h, username: u, password: '${P}'" + more + "}"


OURS = [
    # (id, the text of s0.yaml beside PROJECT in p.yaml)
    ("a short interval in seconds", schedule("  interval: 60")),
    ("a short interval in minutes", schedule("  interval: 30m")),
    ("a negative grace", schedule(CRON, "  misfire_grace: -5")),
    ("a negative settle", project("t", "  delivery: {settle: -1}")),
    ("a settle that is not a duration", project("t", "  delivery: {settle: soon}")),
    ("an SFTP port 0", project("t", sftp(", port: 0"))),
    ("an SFTP port past 65535", schedule(CRON, "  sftp_override: {port: 70000}")),
    ("a literal database URL", project("t", "  ").replace(
        "{table: t}", "{table: t, database_url: 'postgresql://u:pw@db/x'}")),
    ("a reference with spaces", schedule(CRON, "  sftp_override: {password: '${ P }'}")),
    ("upsert without a key", project("t").replace("{table: t}", "{table: t, mode: upsert}")),
    ("a key without upsert", project("t").replace("{table: t}", "{table: t, key: [id]}")),
    ("a column that is not an identifier", project("t").replace(
        "{table: t}", '{table: t, columns: [id, "a b"]}')),
    ("a table in three parts", project("a.b.c")),
    ("move without an archive", project("t", sftp(", after_import: move"))),
    ("an external project with a target", project("t", "  external: true")),
    ("a project with neither", PROJECT.replace("  target: {table: public.sales}",
                                               "  csv: {header: true}").replace("sales", "o")),
    ("two characters as a delimiter", project("t", "  csv: {delimiter: ';;'}")),
    ("an empty quote", project("t", "  csv: {quote: ''}")),
    ("neither cron nor interval", schedule()),
    ("both sources", schedule(CRON, "  local_files: [a.csv]", "  sftp_override: {host: h}")),
    ("a name with a space", schedule(CRON, name="'my import'")),
    ("a project name with a slash", schedule(CRON, project="sales/x")),
    ("a duration in weeks", schedule("  interval: 2w")),
]  # fmt: skip

YAML = "a YAML matter: the schema sees the value after parsing, not how it was written"
CROSS = "a rule between documents: the schema sees one document at a time"
ZONES = "zones the tz database lacks: an enum of its names would change with each tzdata"
RESERVED = "reserved tables: matched case-insensitively, and ECMA patterns have no flags"
OVERFLOW = "a duration past 2147483647 s in units: a pattern cannot add"
NUL = "a NUL character in free text (paths, patterns, the CSV null): left to validate"
BEYOND_THE_SCHEMA = {
    "value check": ZONES,
    "a region of the tz database": ZONES,
    "another region": ZONES,
    "leading zero": YAML,
    "duplicate key": YAML,
    "custom tag": YAML,
    "complex key": YAML,
    "undeclared project": CROSS,
    "duplicate name across files": CROSS,
    "interval past integer in hours": OVERFLOW,
    "interval past integer in parts": OVERFLOW,
    "grace past integer in seconds": OVERFLOW,
    "a short interval in minutes": "an interval under 1h written in units: a pattern cannot add",
    "5000 digits in a cron": "cron expressions: their fields and ranges are checked by validate",
    "cron longer than its column": "cron expressions: the length of the canonical spelling",
    "NUL as \\x00 in a list": NUL,
    "NUL as the CSV null": NUL,
    "NUL in an SFTP pattern": NUL,
    "the management ledger": RESERVED,
    "the ledger of another database": RESERVED,
    "the schedules, in another schema": RESERVED,
    "the jobs, upper case": RESERVED,
    "the projects": RESERVED,
    "the load stage": RESERVED,
    "a system catalog": RESERVED,
    "a catalog, unqualified": RESERVED,
    "information_schema": RESERVED,
    "pg_toast": RESERVED,
    "pg_temp": RESERVED,
}

INVALID = (
    [(c[0], c[1]) for c in FAILURES]
    + [(c[0], schedule(CRON, c[1])) for c in SECRETS]
    + [(c[0], c[1]) for c in DATABASE_REJECTS]
    + OURS
)


def _values(text: str) -> list[Any] | None:
    """The documents as the loader parses them; None if the YAML itself is refused."""
    parsed, problems = parse_documents(text.encode(), text)
    return None if problems else [document.value for document in parsed]


def test_the_schema_names_its_version() -> None:
    """The schema carries a stable ``$id`` for reconciler/v1 and is a valid 2020-12 schema."""
    assert SCHEMA["$id"] == "urn:reconciler:schema:reconciler-v1"
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_cases_are_named_once() -> None:
    """Each case has its own id, and every listed exception is a case."""
    ids = [case_id for case_id, _ in INVALID]
    assert len(ids) == len(set(ids))
    assert set(BEYOND_THE_SCHEMA) <= set(ids)


@pytest.mark.parametrize("text", [c[1] for c in INVALID], ids=[c[0] for c in INVALID])
def test_validate_refuses_every_case(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``reconcile validate`` refuses each case with a finding in the file."""
    (tmp_path / "p.yaml").write_text(PROJECT)
    (tmp_path / "s0.yaml").write_text(text)
    assert main(["validate", str(tmp_path)]) == EXIT_ERROR
    assert "s0.yaml:" in capsys.readouterr().out


@pytest.mark.parametrize(("case_id", "text"), INVALID, ids=[c[0] for c in INVALID])
def test_the_schema_refuses_what_it_can_express(case_id: str, text: str) -> None:
    """The schema refuses each case but those listed (with why); those it accepts."""
    values = _values(text)
    if values is None:  # refused as YAML before any document exists: nothing for a schema
        assert case_id not in BEYOND_THE_SCHEMA
        return
    refused = not all(VALIDATOR.is_valid(value) for value in values)
    assert refused == (case_id not in BEYOND_THE_SCHEMA), BEYOND_THE_SCHEMA.get(case_id, case_id)


VALID_TEXTS = [(c[0], c[1]) for c in VALID + AT_THE_LIMITS] + [
    ("the project of every case", PROJECT.replace("name: sales", "name: twin")),
    ("an external project", project("t").replace("{table: t}", "null") + "  external: true\n"),
    ("upsert with a key",
     project("t").replace("{table: t}", "{table: t, mode: upsert, key: [id]}")),
    ("move with an archive",
     project("t", sftp(", after_import: move, archive_dir: a"))),
    ("an interval of an hour in seconds", schedule("  interval: 3600")),
    ("leading zeros in a duration", schedule("  interval: '00000000000002h'")),
    ("cron with a null interval", schedule(CRON, "  interval: null")),
    ("a callback with a port", schedule(CRON, "  callback_url: 'https://h.example:65535/x'")),
    ("a callback with an empty port", schedule(CRON, "  callback_url: 'http://h.example:/x'")),
    ("a zone with a plus", schedule(CRON, "  timezone: Etc/GMT+5")),
    ("a settle of zero", project("t", "  delivery: {settle: 0}")),
]  # fmt: skip


@pytest.mark.parametrize("text", [c[1] for c in VALID_TEXTS], ids=[c[0] for c in VALID_TEXTS])
def test_the_schema_accepts_what_validate_accepts(text: str, tmp_path: Path) -> None:
    """What loads without findings is valid for the schema too: it is never stricter."""
    (tmp_path / "p.yaml").write_text(PROJECT)
    (tmp_path / "s0.yaml").write_text(text)
    assert main(["validate", str(tmp_path)]) == 0
    values = _values(text)
    assert values is not None
    for value in values:
        VALIDATOR.validate(value)
