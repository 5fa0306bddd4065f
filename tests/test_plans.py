"""The pure planner: desired rows against actual rows, ownership, guards and rendering."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.errors import GuardRefused
from reconciler.model import guards
from reconciler.model.loading import LoadedDocument
from reconciler.model.plans import (
    Kind,
    Op,
    Plan,
    Row,
    desired_rows,
    make_plan,
    resolve_local_files,
    schedule_fields,
    spec_hash,
)
from reconciler.model.rendering import plan_document, render_plan
from reconciler.model.specs import ScheduleDocument

OWNER = "reconcile"


def schedule(name: str, owner: str | None = OWNER, **changes: Any) -> Row:
    spec: dict[str, Any] = {
        "project": "p",
        "cron": "0 0 * * *",
        "interval_seconds": None,
        "timezone": "UTC",
        "enabled": True,
        "callback_url": None,
        "sftp_override": None,
        "local_files": None,
        "misfire_grace_seconds": 300,
    }
    spec.update(changes)
    return Row(Kind.SCHEDULE, name, schedule_fields(**spec), owner, "a.yaml", 1)


def project(name: str = "p", owner: str | None = OWNER, table: str = "public.t") -> Row:
    return Row(Kind.PROJECT, name, {"spec": {"target": {"table": table}}}, owner, "p.yaml", 1)


def apply_to(plan: Plan, actual: list[Row]) -> list[Row]:
    """What the database holds after executing ``plan`` (the model of store.rows)."""
    rows = {r.key: r for r in actual}
    for change in plan.changes:
        key = (change.kind, change.name)
        if change.op is Op.DELETE:
            del rows[key]
        else:
            assert change.desired is not None
            rows[key] = replace(change.desired, stored_hash=spec_hash(change.desired.fields))
    return list(rows.values())


def test_create_update_delete_sorted() -> None:
    """Projects come before schedules; each op carries its fields."""
    desired = [project(), schedule("b", cron="5 0 * * *"), schedule("c")]
    actual = [project(), schedule("b"), schedule("z")]
    plan = make_plan(desired, actual, owner=OWNER)
    assert [(c.op, c.kind, c.name) for c in plan.changes] == [
        (Op.UPDATE, Kind.SCHEDULE, "b"),
        (Op.CREATE, Kind.SCHEDULE, "c"),
        (Op.DELETE, Kind.SCHEDULE, "z"),
    ]
    assert [(d.field, d.old, d.new) for d in plan.changes[0].diffs] == [
        ("cron_expression", "0 0 * * *", "5 0 * * *")
    ]


def test_unowned_clash_is_a_conflict_unless_adopted() -> None:
    """A row created elsewhere is never touched; --adopt turns it into an owned update."""
    desired = [project(), schedule("legacy")]
    actual = [project(), schedule("legacy", owner=None)]
    plan = make_plan(desired, actual, owner=OWNER)
    assert plan.empty
    assert plan.conflicts == ("Schedule legacy",)
    adopted = make_plan(desired, actual, owner=OWNER, adopt=True)
    assert [(c.op, c.adopt) for c in adopted.changes] == [(Op.UPDATE, True)]
    assert adopted.changes[0].diffs[0].field == "owner"


def test_other_owners_rows_are_not_deleted() -> None:
    """Rows of another owner id are invisible to deletes."""
    plan = make_plan([], [project(owner="other"), schedule("x", owner="other")], owner=OWNER)
    assert plan.empty


def test_deleting_a_project_used_by_another_owner_is_refused() -> None:
    """The seed's ON DELETE CASCADE would take another owner's schedule along: an error."""
    plan = make_plan([], [project(), schedule("theirs", owner="other")], owner=OWNER)
    assert plan.errors
    assert "theirs" in plan.errors[0]


def test_a_project_turned_external_is_kept() -> None:
    """Declaring an owned project external stops managing it; it is never deleted."""
    external = Row(
        Kind.PROJECT, "p", {"spec": {"external": True}}, OWNER, "p.yaml", 1, external=True
    )
    plan = make_plan([external, schedule("a")], [project(), schedule("a")], owner=OWNER)
    assert plan.empty
    assert plan.errors == ()


def test_rename_is_a_delete_and_a_create_and_says_so() -> None:
    """Renaming a schedule deletes the old name and creates the new one, marked as a rename."""
    plan = make_plan([project(), schedule("new")], [project(), schedule("old")], owner=OWNER)
    create = plan.of(Op.CREATE, Kind.SCHEDULE)[0]
    assert create.renamed_from == "old"
    assert "rename of old" in render_plan(plan)


def test_moved_document_is_not_a_change() -> None:
    """A document moved to another file or line shows no change (its location is refreshed)."""
    desired = [replace(schedule("a"), source="b.yaml", line=9)]
    plan = make_plan(desired, [schedule("a")], owner=OWNER)
    assert plan.empty
    assert [r.name for r in plan.moved] == ["a"]


def loaded_schedule(source: str, *local_files: str) -> LoadedDocument:
    document = ScheduleDocument.model_validate(
        {
            "apiVersion": "reconciler/v1",
            "kind": "Schedule",
            "metadata": {"name": "orders"},
            "spec": {"project": "p", "cron": "0 6 * * *", "local_files": list(local_files)},
        }
    )
    return LoadedDocument(document, source, 12, 1)


@pytest.mark.parametrize(
    ("source", "written", "stored"),
    [
        ("imports.yaml", "../data/orders_*.csv", "../data/orders_*.csv"),
        ("team/imports.yaml", "../../data/orders_*.csv", "../data/orders_*.csv"),
        ("team/imports.yaml", "../data/orders_*.csv", "data/orders_*.csv"),
        ("team/imports.yaml", "./in//*.csv", "team/in/*.csv"),
        ("a/b/imports.yaml", "**/*.csv", "a/b/**/*.csv"),
        ("team/imports.yaml", "/srv/in/*.csv", "/srv/in/*.csv"),
    ],
)
def test_local_files_are_stored_relative_to_the_schedules_folder(
    source: str, written: str, stored: str
) -> None:
    """A glob written beside a file becomes the glob a run reads, from the schedules folder."""
    assert resolve_local_files([written], source) == [stored]
    (row,) = desired_rows([loaded_schedule(source, written)], owner=OWNER)
    assert row.fields["local_files"] == [stored]


@pytest.mark.parametrize(
    ("moved_to", "written", "diff"),
    [
        ("team/imports.yaml", "../../data/orders_*.csv", None),
        ("team/imports.yaml", "../data/orders_*.csv", ["data/orders_*.csv"]),
        ("imports.yaml", "../data/orders_*.csv", None),
    ],
)
def test_moving_a_file_plans_what_the_run_will_read(
    moved_to: str, written: str, diff: list[str] | None
) -> None:
    """A move that keeps the files read is no change; one that changes them is an update."""
    (before,) = desired_rows([loaded_schedule("imports.yaml", "../data/orders_*.csv")], owner=OWNER)
    actual = replace(before, stored_hash=spec_hash(before.fields))
    desired = desired_rows([loaded_schedule(moved_to, written)], owner=OWNER)
    plan = make_plan(desired, [actual], owner=OWNER)
    if diff is None:
        assert plan.empty
        return
    (change,) = plan.changes
    assert [(d.field, d.old, d.new) for d in change.diffs] == [
        ("local_files", ["../data/orders_*.csv"], diff)
    ]
    assert not change.drift


def test_drift_is_labelled() -> None:
    """An owned row whose stored hash matches the documents but whose columns do not drifted."""
    want = schedule("a")
    edited = replace(schedule("a", enabled=False), stored_hash=spec_hash(want.fields))
    plan = make_plan([want], [edited], owner=OWNER)
    assert plan.changes[0].drift
    assert "drift" in render_plan(plan)


@pytest.mark.parametrize(
    ("desired", "owned", "allow_empty", "max_deletes", "refused"),
    [
        (0, 3, False, 10, "--allow-empty"),
        (0, 3, True, 10, None),
        (0, 0, False, 10, None),
        (1, 12, False, 10, "--max-deletes 11"),
        (1, 12, False, 11, None),
    ],
)
def test_guards(
    desired: int, owned: int, allow_empty: bool, max_deletes: int, refused: str | None
) -> None:
    """Each guard refuses with a message naming its override."""
    actual = [schedule(f"s{i}") for i in range(owned)]
    want = [schedule("s0")] if desired else []
    plan = make_plan(want, actual, owner=OWNER)
    check = {
        "desired_count": len(want),
        "owned_count": owned,
        "allow_empty": allow_empty,
        "max_deletes": max_deletes,
    }
    if refused is None:
        guards.check(plan, **check)
    else:
        with pytest.raises(GuardRefused, match=refused):
            guards.check(plan, **check)


def test_render_summary_lines() -> None:
    """The closing line counts creates, updates and deletes, or says No changes."""
    assert render_plan(make_plan([], [], owner=OWNER)) == "No changes."
    text = render_plan(make_plan([project()], [], owner=OWNER))
    assert text.endswith("Plan: 1 to create, 0 to update, 0 to delete.")
    assert "+ Project p  (p.yaml:1)" in text
    assert plan_document(make_plan([project()], [], owner=OWNER))["summary"]["create"] == 1


names = st.sampled_from([f"n{i}" for i in range(8)])
owners = st.sampled_from([OWNER, "other", None])
crons = st.sampled_from(["0 0 * * *", "*/5 * * * *", "0 12 * * 1-5"])


@st.composite
def rows(draw: st.DrawFn, owned_only: bool = False) -> list[Row]:
    out = {}
    for name in draw(st.lists(names, unique=True)):
        owner = OWNER if owned_only else draw(owners)
        out[name] = schedule(name, owner=owner, cron=draw(crons), enabled=draw(st.booleans()))
    return list(out.values())


@settings(max_examples=200, deadline=None)
@given(desired=rows(owned_only=True))
def test_plan_against_itself_is_empty(desired: list[Row]) -> None:
    """Planning the desired rows against themselves changes nothing."""
    assert make_plan(desired, desired, owner=OWNER).empty


@settings(max_examples=300, deadline=None)
@given(desired=rows(owned_only=True), actual=rows(), adopt=st.booleans())
def test_apply_then_plan_is_empty_and_unowned_untouched(
    desired: list[Row], actual: list[Row], adopt: bool
) -> None:
    """After applying a plan, planning again is empty; unowned rows are never touched."""
    plan = make_plan(desired, actual, owner=OWNER, adopt=adopt)
    untouchable = {r.key for r in actual if r.owner != OWNER}
    touched = {(c.kind, c.name) for c in plan.changes}
    if adopt:
        assert all(c.adopt for c in plan.changes if (c.kind, c.name) in untouchable)
    else:
        assert not touched & untouchable
    after = apply_to(plan, actual)
    again = make_plan(desired, after, owner=OWNER, adopt=adopt)
    assert again.changes == ()
    if not adopt:
        assert {r.key: r for r in after if r.key in untouchable} == {
            r.key: r for r in actual if r.key in untouchable
        }
