"""The plan: what must change in the database so that it matches the documents. Pure.

``desired_rows`` turns loaded documents into rows (a ``Desired`` value, as ``reading.load_desired``
returns it); ``store.rows`` reads the actual rows;
``make_plan`` compares the two and returns a ``Plan`` value, which ``--dry-run`` renders and apply
executes (the very same object). Identity is kind + name. Only rows owned by ``owner`` are ever
updated or deleted; a clash with another owner's row is a conflict unless the user adopts it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from reconciler.model.durations import RETRY_BACKOFF_DEFAULT
from reconciler.model.specs import ProjectDocument, ScheduleDocument

if TYPE_CHECKING:
    from reconciler.model.loading import LoadedDocument

__all__ = [
    "Change",
    "Desired",
    "FieldDiff",
    "Kind",
    "Op",
    "Plan",
    "Row",
    "desired_rows",
    "flatten_fields",
    "make_plan",
    "resolve_local_files",
    "schedule_fields",
    "spec_hash",
]


class Kind(StrEnum):
    PROJECT = "Project"
    SCHEDULE = "Schedule"


class Op(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Row:
    """One project or schedule, desired (from a document) or actual (from the database).

    ``fields`` hold the compared values in normal form (JSON-like); run statistics are never
    among them. ``stored_hash`` is the hash the reconciler wrote last (actual rows only), which
    tells drift (edited behind our back) from an ordinary change.
    """

    kind: Kind
    name: str
    fields: Mapping[str, Any]
    owner: str | None = None
    source: str | None = None
    line: int = 0
    stored_hash: str | None = None
    external: bool = False

    @property
    def key(self) -> tuple[Kind, str]:
        return (self.kind, self.name)

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}" if self.source and self.line else (self.source or "")


@dataclass(frozen=True, slots=True)
class FieldDiff:
    field: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class Change:
    """One create, update or delete of one row."""

    op: Op
    kind: Kind
    name: str
    desired: Row | None
    actual: Row | None
    diffs: tuple[FieldDiff, ...] = ()
    adopt: bool = False
    drift: bool = False
    renamed_from: str | None = None

    @property
    def location(self) -> str:
        row = self.desired or self.actual
        return row.location if row else ""


@dataclass(frozen=True, slots=True)
class Plan:
    """Every change, sorted: projects before schedules, then by name; plus what blocks applying."""

    changes: tuple[Change, ...]
    owner: str
    conflicts: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    moved: tuple[Row, ...] = field(default=(), compare=False)

    def count(self, op: Op) -> int:
        return sum(1 for c in self.changes if c.op is op)

    @property
    def empty(self) -> bool:
        return not self.changes

    def of(self, op: Op, kind: Kind) -> list[Change]:
        return [c for c in self.changes if c.op is op and c.kind is kind]


# Schedule fields added after rows were first hashed, with their defaults: counted in the hash
# only when they differ, so a row hashed before they existed keeps its hash, and an edit behind
# the reconciler's back is still told apart from a change of its document.
_LATER_FIELDS: dict[str, Any] = {
    "timeout_seconds": None,
    "retries": 0,
    "retry_backoff_seconds": RETRY_BACKOFF_DEFAULT,
}


def spec_hash(fields: Mapping[str, Any]) -> str:
    """A stable hash of a row's compared fields."""
    hashed = {k: v for k, v in fields.items() if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}
    text = json.dumps(hashed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_local_files(globs: Sequence[str] | None, source: str | None) -> list[str] | None:
    """Globs written relative to ``source``'s folder, made relative to the schedules folder.

    This is the form that is stored, compared and read by a run, so moving a document to another
    folder shows as the change it is. Absolute globs stay as written; relative ones are
    posix-normalised (``team/../../data/*.csv`` is ``../data/*.csv``).
    """
    if globs is None:
        return None
    base = posixpath.dirname(source or "")
    return [g if posixpath.isabs(g) else posixpath.normpath(posixpath.join(base, g)) for g in globs]


def schedule_fields(
    *,
    project: str | None,
    cron: str | None,
    interval_seconds: int | None,
    timezone: str | None,
    enabled: bool | None,
    callback_url: str | None,
    sftp_override: Mapping[str, Any] | None,
    local_files: Sequence[str] | None,
    misfire_grace_seconds: int | None,
    timeout_seconds: int | None = None,
    retries: int | None = None,
    retry_backoff_seconds: int | None = None,
) -> dict[str, Any]:
    """The compared fields of a schedule, in normal form, from either side.

    ``local_files`` are relative to the schedules folder (``resolve_local_files``), as stored.
    A missing ``timeout_seconds`` is no limit; missing ``retries`` and ``retry_backoff_seconds``
    are their defaults (none, 30 s).
    """
    return {
        "project": project,
        "schedule_type": "cron" if cron is not None else "interval",
        "cron_expression": cron,
        "interval_seconds": interval_seconds,
        "timezone": timezone or "UTC",
        "enabled": True if enabled is None else enabled,
        "callback_url": callback_url,
        "sftp_override": dict(sftp_override) if sftp_override else None,
        "local_files": None if local_files is None else list(local_files),
        "misfire_grace_seconds": 300 if misfire_grace_seconds is None else misfire_grace_seconds,
        "timeout_seconds": timeout_seconds,
        "retries": 0 if retries is None else retries,
        "retry_backoff_seconds": RETRY_BACKOFF_DEFAULT
        if retry_backoff_seconds is None
        else retry_backoff_seconds,
    }


def _desired(loaded: LoadedDocument, owner: str) -> Row:
    doc = loaded.document
    if isinstance(doc, ProjectDocument):
        # The delivery block is stored with only what differs from its defaults (and not at all
        # when nothing does), so rows written before it existed show no change, and a plan
        # shows only the settings the document gives.
        spec = doc.spec.model_dump(mode="json", exclude={"delivery"})
        delivery = doc.spec.delivery.model_dump(mode="json", exclude_defaults=True)
        if delivery:
            spec["delivery"] = delivery
        return Row(
            Kind.PROJECT,
            doc.metadata.name,
            {"spec": spec},
            owner,
            loaded.source,
            loaded.line,
            external=doc.spec.external,
        )
    assert isinstance(doc, ScheduleDocument)
    s = doc.spec
    fields = schedule_fields(
        project=s.project,
        cron=s.cron,
        interval_seconds=s.interval,
        timezone=s.timezone,
        enabled=s.enabled,
        callback_url=s.callback_url,
        sftp_override=s.sftp_override.model_dump(mode="json", exclude_none=True)
        if s.sftp_override
        else None,
        local_files=resolve_local_files(s.local_files, loaded.source),
        misfire_grace_seconds=s.misfire_grace,
        timeout_seconds=s.timeout,
        retries=s.retries,
        retry_backoff_seconds=s.retry_backoff,
    )
    return Row(Kind.SCHEDULE, doc.metadata.name, fields, owner, loaded.source, loaded.line)


def desired_rows(documents: Iterable[LoadedDocument], *, owner: str) -> tuple[Row, ...]:
    """The rows the documents ask for, owned by ``owner``."""
    return tuple(_desired(d, owner) for d in documents)


@dataclass(frozen=True, slots=True)
class Desired:
    """What the folder asks for: one row per document, in the form that is stored."""

    rows: tuple[Row, ...]


def flatten_fields(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k in sorted(value):
            out.update(flatten_fields(value[k], f"{prefix}.{k}"))
        return out
    return {prefix: value}


def _diffs(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[FieldDiff, ...]:
    if old == new:  # the common case, compared in C: 10,000 unchanged rows cost milliseconds
        return ()
    flat_old = flatten_fields(dict(old), "")
    flat_new = flatten_fields(dict(new), "")
    keys = sorted(set(flat_old) | set(flat_new))
    return tuple(
        FieldDiff(k[1:], flat_old.get(k), flat_new.get(k))
        for k in keys
        if flat_old.get(k) != flat_new.get(k)
    )


def _sort_key(change: Change) -> tuple[int, str]:
    return (0 if change.kind is Kind.PROJECT else 1, change.name)


def _annotate_renames(changes: list[Change]) -> list[Change]:
    deleted = {
        (c.kind, json.dumps(c.actual.fields, sort_keys=True, default=str)): c.name
        for c in changes
        if c.op is Op.DELETE and c.actual is not None
    }
    out = []
    for change in changes:
        if change.op is Op.CREATE and change.desired is not None:
            sig = (change.kind, json.dumps(change.desired.fields, sort_keys=True, default=str))
            if sig in deleted:
                out.append(replace(change, renamed_from=deleted[sig]))
                continue
        out.append(change)
    return out


def make_plan(
    desired: Sequence[Row], actual: Sequence[Row], *, owner: str, adopt: bool = False
) -> Plan:
    """Compare desired with actual rows; the changes that make actual equal desired."""
    have = {r.key: r for r in actual}
    want = {r.key: r for r in desired if not r.external}
    changes: list[Change] = []
    conflicts: list[str] = []
    errors: list[str] = []
    moved: list[Row] = []
    for key, row in sorted(want.items()):
        old = have.get(key)
        if old is None:
            changes.append(Change(Op.CREATE, row.kind, row.name, row, None))
            continue
        diffs = _diffs(old.fields, row.fields)
        if old.owner != owner:
            if not adopt:
                conflicts.append(f"{row.kind} {row.name}")
                continue
            diffs = (FieldDiff("owner", old.owner, owner), *diffs)
            changes.append(Change(Op.UPDATE, row.kind, row.name, row, old, diffs, adopt=True))
        elif diffs:
            drift = old.stored_hash is not None and old.stored_hash == spec_hash(row.fields)
            changes.append(Change(Op.UPDATE, row.kind, row.name, row, old, diffs, drift=drift))
        elif (old.source, old.line) != (row.source, row.line):
            moved.append(row)
    for row in desired:
        if row.external and have.get(row.key) is None:
            errors.append(
                f"project {row.name} is declared external but does not exist in the database; "
                "create it there or declare it here with a target"
            )
    # A project now declared external stays: schedules here still use it.
    declared = set(want) | {r.key for r in desired if r.external}
    deleting = {r.key for r in actual if r.owner == owner and r.key not in declared}
    for key in sorted(deleting):
        changes.append(Change(Op.DELETE, key[0], key[1], None, have[key]))
    for row in actual:  # the seed's ON DELETE CASCADE would take other owners' schedules along
        project = row.fields.get("project")
        if row.kind is Kind.SCHEDULE and row.owner != owner and (Kind.PROJECT, project) in deleting:
            errors.append(
                f"project {project} cannot be deleted: schedule {row.name} "
                f"(owner {row.owner or 'none'}) still uses it; delete or move that schedule first"
            )
    changes = _annotate_renames(changes)
    return Plan(
        tuple(sorted(changes, key=_sort_key)),
        owner,
        tuple(conflicts),
        tuple(errors),
        tuple(moved),
    )
