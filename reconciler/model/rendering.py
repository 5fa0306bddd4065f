"""Rendering a plan for people (``terraform plan`` style) and for machines (versioned JSON). Pure.

``reconcile --dry-run`` and ``reconcile apply`` both render the very plan object apply executes.
Colour is a parameter: the command decides (terminal, ``--no-color``, ``NO_COLOR``).
Credentials written into a URL (``https://user:password@host``) are masked in both renderings:
the loader refuses them in documents, but a row written by the old API may still hold some.
"""

from __future__ import annotations

import json
import re
from typing import Any

from reconciler.model.plans import Change, Op, Plan, flatten_fields

__all__ = ["plan_document", "plan_summary", "render_plan"]

_SYMBOL = {Op.CREATE: "+", Op.UPDATE: "~", Op.DELETE: "-"}
_COLOR = {Op.CREATE: "32", Op.UPDATE: "33", Op.DELETE: "31"}
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")


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


def _render_change(change: Change, color: bool) -> list[str]:
    symbol = _paint(_SYMBOL[change.op], _COLOR[change.op], color)
    where = change.location
    if change.op is Op.DELETE and where:
        where = f"was {where}"
    notes = []
    if change.adopt:
        notes.append("adopt")
    if change.drift:
        notes.append("drift: changed outside reconcile, will be set back")
    if change.renamed_from:
        notes.append(f"rename of {change.renamed_from}: a delete and a create")
    head = f"  {symbol} {change.kind} {change.name}"
    if where:
        head += _paint(f"  ({where})", "2", color)
    if notes:
        head += "  " + _paint("[" + "; ".join(notes) + "]", "1", color)
    lines = [head]
    if change.op is Op.CREATE:
        lines += [f"      {k}: {_value(v)}" for k, v in _flat_fields(change)]
    elif change.op is Op.UPDATE:
        lines += [f"      {d.field}: {_value(d.old)} -> {_value(d.new)}" for d in change.diffs]
    return lines


def plan_summary(plan: Plan) -> str:
    """The closing line: ``Plan: N to create, N to update, N to delete.`` or ``No changes.``"""
    if plan.empty:
        return "No changes."
    return (
        f"Plan: {plan.count(Op.CREATE)} to create, {plan.count(Op.UPDATE)} to update, "
        f"{plan.count(Op.DELETE)} to delete."
    )


def render_plan(plan: Plan, *, color: bool = False) -> str:
    """The plan as text: one block per change, sorted, then the summary line."""
    lines: list[str] = []
    for change in plan.changes:
        lines += _render_change(change, color)
    for conflict in plan.conflicts:
        lines.append(f"  ! {conflict}: exists and is not owned by {plan.owner!r} (use --adopt)")
    for error in plan.errors:
        lines.append(f"  ! {error}")
    if lines:
        lines.append("")
    lines.append(plan_summary(plan))
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


def plan_document(plan: Plan) -> dict[str, Any]:
    """The body of the versioned ``Plan`` JSON document."""
    return {
        "owner": plan.owner,
        "summary": {
            "create": plan.count(Op.CREATE),
            "update": plan.count(Op.UPDATE),
            "delete": plan.count(Op.DELETE),
        },
        "changes": [_change_document(c) for c in plan.changes],
        "conflicts": list(plan.conflicts),
        "errors": list(plan.errors),
    }
