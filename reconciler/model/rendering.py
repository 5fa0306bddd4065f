"""Rendering a plan for people (``terraform plan`` style) and for machines (versioned JSON). Pure.

``reconcile --dry-run`` and ``reconcile apply`` both render the very plan object apply executes.
Colour is a parameter: the command decides (terminal, ``--no-color``, ``NO_COLOR``).
Credentials written into a URL (``https://user:password@host``) are masked in both renderings:
the loader refuses them in documents, but a row written by the old API may still hold some.
Names, locations and messages are shown through ``escaping``: ``terminal`` in the text (which the
comment's diff block holds too), ``markdown_code`` for the comment's own words about a path.
A plan that a safety guard refuses (``guards.evaluate``) is rendered with its ``refusal``: a last
line in the text, a ``refused`` field in the JSON, a banner at the top of the comment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from reconciler.escaping import capped, fence, markdown, markdown_code, terminal
from reconciler.model.guards import Command, Guard, Refusal
from reconciler.model.plans import Change, Kind, Op, Plan, flatten_fields
from reconciler.model.timing import next_fire_times

__all__ = [
    "COMMENT_LIMIT",
    "MARKER",
    "plan_document",
    "plan_summary",
    "render_markdown",
    "render_plan",
]

# GitHub refuses comments over 65,536 characters; stay clear of it, marker and notes included.
COMMENT_LIMIT = 65_000
# Hidden in the rendered comment: a workflow finds its earlier comment by it and edits it in place.
MARKER = "<!-- reconcile-plan -->"

_SYMBOL = {Op.CREATE: "+", Op.UPDATE: "~", Op.DELETE: "-"}
_COLOR = {Op.CREATE: "32", Op.UPDATE: "33", Op.DELETE: "31"}
# From the start of a run of scheme characters only: tried from each one, a long run is quadratic.
_URL_USERINFO = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")


def _masked(value: Any) -> Any:
    """``value`` with the user and password of every URL in it replaced by ``***``."""
    if isinstance(value, str):
        return _URL_USERINFO.sub(r"\1***@", value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value


def _value(value: Any) -> str:
    value = _masked(value)
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, separators=(", ", ": "), sort_keys=True, default=str)


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def _flat_fields(change: Change) -> list[tuple[str, Any]]:
    assert change.desired is not None
    flat = flatten_fields(dict(change.desired.fields), "")
    return [(k[1:], v) for k, v in sorted(flat.items()) if v is not None]


_TIMING = ("schedule_type", "cron_expression", "interval_seconds", "timezone")


def _next_two(fields: Mapping[str, Any], now: datetime) -> str:
    """The next two fire times of a schedule's timing, ``?`` when it cannot be read."""
    try:
        times = next_fire_times(
            cron=fields.get("cron_expression"),
            interval_seconds=fields.get("interval_seconds"),
            timezone=fields.get("timezone") or "UTC",
            after=now,
            count=2,
        )
    except (ValueError, TypeError):  # a row edited by hand into timing nobody can read
        return "?"
    return ", ".join(t.strftime("%Y-%m-%d %H:%M UTC") for t in times) or "never"


def _timing_line(change: Change, now: datetime | None) -> list[str]:
    """``next: before -> after`` for an update that changes when a schedule fires.

    An interval is counted from ``now`` on both sides: apply anchors a new timing at apply time.
    """
    if now is None or change.desired is None or change.actual is None:
        return []
    if not any(d.field in _TIMING for d in change.diffs):
        return []
    before = _next_two(change.actual.fields, now)
    after = _next_two(change.desired.fields, now)
    return [f"      next: {before} -> {after}"]


def _render_change(change: Change, color: bool, now: datetime | None = None) -> list[str]:
    symbol = _paint(_SYMBOL[change.op], _COLOR[change.op], color)
    where = terminal(change.location)
    if change.op is Op.DELETE and where:
        where = f"was {where}"
    notes = []
    if change.adopt:
        notes.append("adopt")
    if change.drift:
        notes.append("drift: changed outside reconcile, will be set back")
    if change.renamed_from:
        notes.append(f"rename of {terminal(change.renamed_from)}: a delete and a create")
    if change.op is Op.DELETE and change.kind == Kind.PROJECT:
        notes.append(
            "its import record stays: declared again, it loads no file twice; "
            f"`reconcile forget {terminal(change.name)}` loads them again"
        )
    head = f"  {symbol} {change.kind} {terminal(change.name)}"
    if where:
        head += _paint(f"  ({where})", "2", color)
    if notes:
        head += "  " + _paint("[" + "; ".join(notes) + "]", "1", color)
    lines = [head]
    if change.op is Op.CREATE:
        lines += [f"      {terminal(k)}: {_value(v)}" for k, v in _flat_fields(change)]
    elif change.op is Op.UPDATE:
        lines += [
            f"      {terminal(d.field)}: {_value(d.old)} -> {_value(d.new)}" for d in change.diffs
        ]
        lines += _timing_line(change, now)
    return lines


def plan_summary(plan: Plan) -> str:
    """The closing line: ``Plan: N to create, N to update, N to delete.`` or ``No changes.``"""
    if plan.empty:
        return "No changes."
    return (
        f"Plan: {plan.count(Op.CREATE)} to create, {plan.count(Op.UPDATE)} to update, "
        f"{plan.count(Op.DELETE)} to delete."
    )


def _refused_line(refusal: Refusal) -> str:
    """One line saying apply would refuse; the error on stderr says how to allow it."""
    if refusal.guard is Guard.INVALID_FOLDER:
        return "Refused: the schedules folder does not load, so there is no plan to apply."
    return f"Refused: apply would refuse this plan: {terminal(refusal.reason)}."


def render_plan(
    plan: Plan,
    *,
    color: bool = False,
    now: datetime | None = None,
    refusal: Refusal | None = None,
) -> str:
    """The plan as text: one block per change, sorted, then the summary line.

    With ``now``, a change of timing also shows the next two fire times before and after it.
    With ``refusal``, a last line says that apply would refuse it (a folder that does not load
    has no plan: that line is all).
    """
    if refusal is not None and refusal.guard is Guard.INVALID_FOLDER:
        return _paint(_refused_line(refusal), "31", color)
    lines: list[str] = []
    for change in plan.changes:
        lines += _render_change(change, color, now)
    for conflict in plan.conflicts:
        lines.append(
            f"  ! {terminal(conflict)}: exists and is not owned by {plan.owner!r} (use --adopt)"
        )
    for error in plan.errors:
        lines.append(f"  ! {terminal(capped(error))}")
    if lines:
        lines.append("")
    lines.append(plan_summary(plan))
    if refusal is not None:
        lines.append(_paint(_refused_line(refusal), "31", color))
    return "\n".join(lines)


def _change_document(change: Change) -> dict[str, Any]:
    return {
        "op": change.op.value,
        "kind": change.kind.value,
        "name": change.name,
        "source": change.location or None,
        "adopt": change.adopt,
        "drift": change.drift,
        "renamed_from": change.renamed_from,
        "diff": [
            {"field": d.field, "old": _masked(d.old), "new": _masked(d.new)} for d in change.diffs
        ],
        "desired": _masked(dict(change.desired.fields)) if change.desired else None,
    }


def plan_document(plan: Plan, refusal: Refusal | None = None) -> dict[str, Any]:
    """The body of the versioned ``Plan`` JSON document.

    ``refused`` is ``null``, or the guard that refuses the plan and its message (which names the
    overrides of ``reconcile apply`` and of the daemon).
    """
    refused = None
    if refusal is not None:
        refused = {"guard": refusal.guard.value, "message": refusal.message(Command.PLAN)}
    return {
        "owner": plan.owner,
        "refused": refused,
        "summary": {
            "create": plan.count(Op.CREATE),
            "update": plan.count(Op.UPDATE),
            "delete": plan.count(Op.DELETE),
        },
        "changes": [_change_document(c) for c in plan.changes],
        "conflicts": list(plan.conflicts),
        "errors": list(plan.errors),
    }


def _diff_line(line: str) -> str:
    line = line.removeprefix("  ")
    return "!" + line[1:] if line.startswith("~ ") else line


def _banner(refusal: Refusal) -> str:
    """A caution block (GitHub shows it in red) saying apply would refuse, then the message."""
    if refusal.guard is Guard.INVALID_FOLDER:
        headline = "the schedules folder does not load, so there is no plan"
    else:
        headline = markdown(refusal.reason)
    message = terminal(capped(refusal.message(Command.PLAN)), lines=True)
    ticks = fence(message)
    return (
        f"> [!CAUTION]\n> **Apply would refuse this** (exit 3): {headline}.\n\n"
        f"{ticks}text\n{message}\n{ticks}\n\n"
    )


def render_markdown(
    plan: Plan,
    *,
    now: datetime | None = None,
    limit: int | None = None,
    saved_as: str = "",
    refusal: Refusal | None = None,
) -> str:
    """The plan as a pull-request comment: the marker, the summary, the plan in a diff block.

    With ``refusal``, a banner under the title says that apply would refuse the plan and why; a
    folder that does not load has no plan, so the banner is all. With ``limit``, the comment is
    cut at a line boundary so that the whole of it, notes and closing fence included, stays under
    ``limit`` characters, and it says where the whole plan was saved (``saved_as``).
    """
    title = f"{MARKER}\n### reconcile plan\n\n"
    banner = _banner(refusal) if refusal is not None else ""
    if refusal is not None and refusal.guard is Guard.INVALID_FOLDER:
        return title + banner
    body = render_plan(plan, now=now)
    # Unindented, so the diff highlighting colours "+" and "-"; "~" becomes "!" (highlighted too).
    lines = [_diff_line(line) for line in body.splitlines()]
    ticks = fence(body)
    head = f"{title}{banner}**{plan_summary(plan)}**\n\n{ticks}diff\n"
    tail = f"\n{ticks}\n"
    text = "\n".join(lines)
    if limit is None or len(head) + len(text) + len(tail) <= limit:
        return head + text + tail
    where = f" The whole plan is saved as {markdown_code(saved_as)}." if saved_as else ""

    def note(shown: int) -> str:
        return f"\n_Plan truncated: {shown} of {len(lines)} lines shown.{where}_\n"

    room = limit - len(head) - len(tail) - len(note(len(lines)))
    kept: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) + 1 > room:
            break
        kept.append(line)
        used += len(line) + 1
    return head + "\n".join(kept) + tail + note(len(kept))
