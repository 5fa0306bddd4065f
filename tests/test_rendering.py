"""Rendering a plan: credentials in URLs never reach a plan, in text or JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.model.plans import Kind, Row, make_plan, schedule_fields
from reconciler.model.rendering import plan_document, render_plan

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
