"""A schedule's run limits, pure: ``timeout``, ``retries`` and ``retry_backoff`` read, checked at
their line, planned, hashed and described by the JSON Schema; the backoff rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler.model.durations import RETRY_DELAY_MAX, retry_delay
from reconciler.model.loading import Loaded, load_files
from reconciler.model.plans import (
    Kind,
    Op,
    Row,
    desired_rows,
    make_plan,
    schedule_fields,
    spec_hash,
)
from reconciler.model.rendering import render_plan
from reconciler.model.specs import ScheduleDocument

OWNER = "reconcile"
PROJECT = b"""\
apiVersion: reconciler/v1
kind: Project
metadata:
  name: sales
spec:
  target: {table: public.sales}
"""
SCHEMA = json.loads(
    (Path(__file__).parent.parent / "schema" / "reconciler-v1.json").read_text(encoding="utf-8")
)


def schedule(*spec: str) -> str:
    """A daily Schedule whose extra spec lines start at line 8."""
    head = "apiVersion: reconciler/v1\nkind: Schedule\nmetadata:\n  name: daily\nspec:\n"
    return head + '  project: sales\n  cron: "0 0 * * *"\n' + "".join(f"  {s}\n" for s in spec)


def load(*spec: str) -> Loaded:
    return load_files([("p.yaml", PROJECT), ("s.yaml", schedule(*spec).encode())], display_root="d")


def limits(*spec: str) -> tuple[Any, ...]:
    """``(timeout, retries, retry_backoff)`` as the document reads."""
    loaded = load(*spec)
    assert not loaded.findings, [str(f) for f in loaded.findings]
    (doc,) = [d.document for d in loaded.documents if isinstance(d.document, ScheduleDocument)]
    return (doc.spec.timeout, doc.spec.retries, doc.spec.retry_backoff)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ((), (None, 0, 30)),
        (("timeout: 600",), (600, 0, 30)),
        (("timeout: 10m",), (600, 0, 30)),
        (('timeout: " 1h30m "',), (5400, 0, 30)),
        (("timeout: 1s", "retries: 10", "retry_backoff: 1h"), (1, 10, 3600)),
        (("retries: 3", "retry_backoff: 45"), (None, 3, 45)),
        (("timeout: null", "retries: 0"), (None, 0, 30)),
    ],
)
def test_limits_read_as_whole_seconds(spec: tuple[str, ...], expected: tuple[Any, ...]) -> None:
    """Durations take the spellings of interval and misfire_grace; the defaults are no limit,
    no retries and a 30 s backoff."""
    assert limits(*spec) == expected


@pytest.mark.parametrize(
    ("line", "where", "message"),
    [
        ("timeout: 0", "8:12", "spec.timeout: a timeout of 0 s would stop every run as it starts"),
        ("timeout: -5", "8:12", "spec.timeout: a duration cannot be negative"),
        ("timeout: 10x", "8:12", "spec.timeout: '10x' is not a duration: write whole seconds"),
        ("timeout: 2147483648", "8:12", "spec.timeout: a duration must be at most 2147483647"),
        ("timeout: true", "8:12", "spec.timeout: a duration is a number of seconds"),
        ("retries: 11", "8:12", "spec.retries: must be at most 10, got the number 11"),
        ("retries: -1", "8:12", "spec.retries: must be at least 0, got the number -1"),
        ("retries: '3'", "8:12", "spec.retries: expected a whole number, got '3': remove the"),
        ("retries: 1.5", "8:12", "spec.retries: expected a whole number, got the number 1.5"),
        ("retry_backoff: 0", "8:18", "spec.retry_backoff: a backoff of 0 s would retry at once"),
        ("retry_backoff: 2h", "8:18", "spec.retry_backoff: a backoff of 7200 s is longer than"),
        ("retry_backoff: soon", "8:18", "spec.retry_backoff: 'soon' is not a duration"),
        ("retry: 3", "8:3", "spec: unknown key 'retry' (did you mean 'retries'?)"),
    ],
)
def test_bad_limits_are_located_at_their_value(line: str, where: str, message: str) -> None:
    """Each mistake is one finding at the value (or the key), saying what to write."""
    findings = [str(f) for f in load(line).findings]
    assert len(findings) == 1, findings
    assert findings[0].startswith(f"d/s.yaml:{where}: {message}"), findings[0]


def test_every_bad_limit_is_reported_in_one_pass() -> None:
    """Three wrong limits are three findings, each at its own line."""
    findings = [str(f) for f in load("timeout: 0", "retries: 99", "retry_backoff: 0").findings]
    assert [f.split(": ")[0] for f in findings] == [
        "d/s.yaml:8:12",
        "d/s.yaml:9:12",
        "d/s.yaml:10:18",
    ]


@pytest.mark.parametrize(
    ("attempt", "backoff", "delay"),
    [
        (2, 30, 30),
        (3, 30, 60),
        (4, 30, 120),
        (8, 30, 1920),
        (9, 30, 3600),  # 3840 capped
        (11, 30, 3600),
        (2, 3600, 3600),
        (3, 3600, 3600),
        (2, 1, 1),
        (11, 1, 512),  # the tenth retry
        (2, 0, 1),  # a row edited by hand: at least a second
        (10**6, 30, 3600),  # no huge power is ever computed
    ],
)
def test_retry_delay_doubles_from_the_backoff_up_to_an_hour(
    attempt: int, backoff: int, delay: int
) -> None:
    """Attempt 2 (the first retry) waits the backoff; each later one twice the one before."""
    assert retry_delay(attempt, backoff) == delay <= RETRY_DELAY_MAX


def test_the_first_attempt_is_not_a_retry() -> None:
    """Attempt 1 is the scheduled run itself: it has no retry delay."""
    with pytest.raises(ValueError, match="the first retry is attempt 2"):
        retry_delay(1, 30)


def _schedule_row(**changes: Any) -> Row:
    spec: dict[str, Any] = {
        "project": "p", "cron": "0 0 * * *", "interval_seconds": None, "timezone": "UTC",
        "enabled": True, "callback_url": None, "sftp_override": None, "local_files": None,
        "misfire_grace_seconds": 300, **changes,
    }  # fmt: skip
    return Row(Kind.SCHEDULE, "daily", schedule_fields(**spec), OWNER, "s.yaml", 1)


def test_documents_become_rows_with_the_limits() -> None:
    """A document's limits are fields of its row, in whole seconds."""
    loaded = load("timeout: 10m", "retries: 2", "retry_backoff: 1m")
    (row,) = [r for r in desired_rows(loaded.documents, owner=OWNER) if r.kind is Kind.SCHEDULE]
    limits = {k: row.fields[k] for k in ("timeout_seconds", "retries", "retry_backoff_seconds")}
    assert limits == {"timeout_seconds": 600, "retries": 2, "retry_backoff_seconds": 60}


@pytest.mark.parametrize(
    ("before", "after", "diff"),
    [
        ({}, {"timeout_seconds": 600}, ("timeout_seconds", None, 600)),
        ({"timeout_seconds": 600}, {"timeout_seconds": 900}, ("timeout_seconds", 600, 900)),
        ({"timeout_seconds": 600}, {}, ("timeout_seconds", 600, None)),
        ({}, {"retries": 3}, ("retries", 0, 3)),
        (
            {"retries": 3},
            {"retries": 3, "retry_backoff_seconds": 60},
            ("retry_backoff_seconds", 30, 60),
        ),
    ],
)
def test_a_change_of_limits_is_an_update(
    before: dict[str, Any], after: dict[str, Any], diff: tuple[Any, ...]
) -> None:
    """A changed timeout, retries or backoff is an update of that field alone."""
    plan = make_plan([_schedule_row(**after)], [_schedule_row(**before)], owner=OWNER)
    (change,) = plan.changes
    assert change.op is Op.UPDATE
    assert [(d.field, d.old, d.new) for d in change.diffs] == [diff]
    assert f"      {diff[0]}: " in render_plan(plan)


def test_unset_limits_and_their_defaults_are_the_same() -> None:
    """Missing values (rows from elsewhere) are no limit, no retries and 30 s: no diff."""
    written = _schedule_row(timeout_seconds=None, retries=0, retry_backoff_seconds=30)
    assert make_plan([written], [_schedule_row()], owner=OWNER).empty


def test_default_limits_leave_the_hash_as_before_they_existed() -> None:
    """A row hashed before these fields existed keeps its hash while they hold their defaults, so
    an edit behind the reconciler's back is still told apart from a change of its document."""
    fields = _schedule_row().fields
    earlier = {k: v for k, v in fields.items() if k not in ("timeout_seconds", "retries",
                                                            "retry_backoff_seconds")}  # fmt: skip
    assert spec_hash(fields) == spec_hash(earlier)
    assert spec_hash(_schedule_row(timeout_seconds=600).fields) != spec_hash(earlier)
    edited = Row(Kind.SCHEDULE, "daily", {**fields, "enabled": False}, OWNER, "s.yaml", 1,
                 stored_hash=spec_hash(earlier))  # fmt: skip
    (change,) = make_plan([_schedule_row()], [edited], owner=OWNER).changes
    assert change.drift


def _schema_errors(spec: dict[str, Any]) -> list[str]:
    document = {
        "apiVersion": "reconciler/v1",
        "kind": "Schedule",
        "metadata": {"name": "daily"},
        "spec": {"project": "sales", "cron": "0 0 * * *", **spec},
    }
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [e.message for e in validator.iter_errors(document)]


@pytest.mark.parametrize(
    ("spec", "valid"),
    [
        ({"timeout": "10m", "retries": 3, "retry_backoff": "30s"}, True),
        ({"timeout": 1, "retries": 0, "retry_backoff": 3600}, True),
        ({"timeout": None}, True),
        ({"timeout": 0}, False),
        ({"timeout": "ten minutes"}, False),
        ({"retries": 11}, False),
        ({"retries": -1}, False),
        ({"retries": "3"}, False),
        ({"retry_backoff": 0}, False),
        ({"retry_backoff": 3601}, False),
    ],
)
def test_the_json_schema_checks_the_limits(spec: dict[str, Any], valid: bool) -> None:
    """Editors and CI linters refuse what validate refuses, where JSON Schema can say it."""
    assert (not _schema_errors(spec)) is valid
