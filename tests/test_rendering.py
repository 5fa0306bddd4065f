"""Rendering a plan: credentials masked, the next runs of a timing change, the PR comment."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.model.plans import Kind, Row, make_plan, schedule_fields
from reconciler.model.rendering import (
    COMMENT_LIMIT,
    MARKER,
    plan_document,
    render_markdown,
    render_plan,
)

OWNER = "reconcile"


def schedule(name: str, callback_url: str | None) -> Row:
    """A schedule row with ``callback_url`` and defaults elsewhere."""
    fields = schedule_fields(
        project="p",
        cron="0 0 * * *",
        interval_seconds=None,
        timezone="UTC",
        enabled=True,
        callback_url=callback_url,
        sftp_override=None,
        local_files=None,
        misfire_grace_seconds=300,
    )
    return Row(Kind.SCHEDULE, name, fields, OWNER, "a.yaml", 1)


STORED = [
    ("user and password", "https://user:pa55word@h.example/hook", "https://***@h.example/hook"),
    ("a token as user", "http://pa55word@h.example:8080/", "http://***@h.example:8080/"),
    ("an empty password", "https://pa55word:@h.example/", "https://***@h.example/"),
]


@pytest.mark.parametrize(("stored", "shown"), [c[1:] for c in STORED], ids=[c[0] for c in STORED])
def test_url_credentials_in_stored_rows_are_masked(stored: str, shown: str) -> None:
    """A row written elsewhere (the old API) with credentials in its URL shows them masked."""
    desired = schedule("s", "https://h.example/new")
    plan = make_plan([desired], [schedule("s", stored)], owner=OWNER)
    text = render_plan(plan)
    document = json.dumps(plan_document(plan))
    assert "pa55word" not in text + document
    assert f"callback_url: {json.dumps(shown)} -> " in text
    diff: list[dict[str, Any]] = plan_document(plan)["changes"][0]["diff"]
    assert diff == [{"field": "callback_url", "old": shown, "new": "https://h.example/new"}]


def test_deleted_rows_and_plain_urls_are_unchanged() -> None:
    """Masking touches only the user part of a URL; an '@' elsewhere stays as written."""
    kept = "https://h.example/a@b?to=x@y"
    plan = make_plan([schedule("s", kept)], [], owner=OWNER)
    assert f'callback_url: "{kept}"' in render_plan(plan)
    assert plan_document(plan)["changes"][0]["desired"]["callback_url"] == kept


NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def _timed(name: str, cron: str | None, interval: int | None = None, tz: str = "UTC") -> Row:
    fields = schedule_fields(
        project="p", cron=cron, interval_seconds=interval, timezone=tz, enabled=True,
        callback_url=None, sftp_override=None, local_files=None, misfire_grace_seconds=300,
    )  # fmt: skip
    return Row(Kind.SCHEDULE, name, fields, OWNER, "a.yaml", 1)


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        pytest.param(
            _timed("s", "0 5 * * *"), _timed("s", "30 11 * * *"),
            "next: 2026-12-01 05:00 UTC, 2026-12-02 05:00 UTC"
            " -> 2026-12-01 11:30 UTC, 2026-12-02 11:30 UTC",
            id="cron",
        ),
        pytest.param(
            _timed("s", "0 5 * * *"), _timed("s", "0 5 * * *", tz="Europe/Berlin"),
            "next: 2026-12-01 05:00 UTC, 2026-12-02 05:00 UTC"
            " -> 2026-12-01 04:00 UTC, 2026-12-02 04:00 UTC",
            id="time-zone",
        ),
        pytest.param(
            _timed("s", "0 5 * * *"), _timed("s", None, 7200),
            "next: 2026-12-01 05:00 UTC, 2026-12-02 05:00 UTC"
            " -> 2026-12-01 05:00 UTC, 2026-12-01 07:00 UTC",
            id="cron-to-interval",
        ),
    ],
)  # fmt: skip
def test_a_timing_change_shows_the_next_two_runs_before_and_after(
    old: Row, new: Row, line: str
) -> None:
    """The plan says what a changed cron, interval or time zone does to the next runs."""
    text = render_plan(make_plan([new], [old], owner=OWNER), now=NOW)
    assert f"      {line}" in text.splitlines()


def test_other_changes_show_no_next_runs() -> None:
    """A change that leaves the timing alone shows no next-run line."""
    old = _timed("s", "0 5 * * *")
    new = Row(old.kind, old.name, {**old.fields, "enabled": False}, OWNER, "a.yaml", 1)
    assert "next:" not in render_plan(make_plan([new], [old], owner=OWNER), now=NOW)


def test_the_markdown_plan_carries_the_marker_and_is_cut_under_the_limit() -> None:
    """A pull-request comment: hidden marker, diff block, cut at a line under the limit."""
    rows = [_timed(f"schedule-{i:05}", "0 5 * * *") for i in range(3000)]
    plan = make_plan(rows, [], owner=OWNER)
    whole = render_markdown(plan, now=NOW)
    assert whole.startswith(MARKER + "\n")
    assert "+ Schedule schedule-02999" in whole
    cut = render_markdown(plan, now=NOW, limit=COMMENT_LIMIT, saved_as="plan.md")
    assert len(whole) > COMMENT_LIMIT > len(cut)
    assert cut.startswith(MARKER + "\n")
    assert "```diff\n+ Schedule schedule-00000" in cut
    assert cut.rstrip().endswith("The whole plan is saved as `plan.md`._")
    assert "\n```\n\n_Plan truncated: " in cut


def test_the_markdown_fence_outgrows_backticks_in_values() -> None:
    """A value holding a fence cannot close the comment's code block early."""
    row = _timed("s", "0 5 * * *")
    row = Row(row.kind, row.name, {**row.fields, "callback_url": "https://h/````"}, OWNER)
    text = render_markdown(make_plan([row], [], owner=OWNER), now=NOW)
    assert "`````diff\n" in text
