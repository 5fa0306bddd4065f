"""Planning against the database and applying the plan: one transaction under an advisory lock.

The reconcile commands call ``plan_against`` (read only) and ``apply_plan``. Apply takes the lock,
reads the rows again and recomputes the plan inside it, checks the guards, then executes: either
everything in the plan lands or nothing does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reconciler.errors import OwnershipConflict, PlanRefused
from reconciler.logs import get_logger
from reconciler.model import guards
from reconciler.model.plans import Desired, Plan, make_plan
from reconciler.store.locks import Fixed
from reconciler.store.migrating import apply_schema, is_current
from reconciler.store.rows import execute_plan, fetch_rows
from reconciler.store.scheduling import notify_changed

if TYPE_CHECKING:
    import psycopg

__all__ = ["APPLY_LOCK", "apply_plan", "plan_against", "refuse_if_blocked"]

APPLY_LOCK = Fixed.APPLY
_log = get_logger("reconciler.apply")


def plan_against(
    conn: psycopg.Connection[Any], desired: Desired, *, owner: str, adopt: bool = False
) -> Plan:
    """The plan for the database as it is now; changes nothing.

    A database whose schema is missing or older is planned against the current schema inside a
    transaction that is rolled back (PostgreSQL's DDL is transactional), so a dry run never
    migrates anything.
    """
    with conn.transaction(force_rollback=True):
        if not is_current(conn):
            apply_schema(conn)
        actual = fetch_rows(conn)
    return make_plan(desired.rows, actual, owner=owner, adopt=adopt)


def _lock(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (APPLY_LOCK,)).fetchone()
    if row and row[0]:
        return
    _log.info("waiting for the apply lock: another reconcile is applying to this database")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPLY_LOCK,))
    _log.info("waited for the apply lock; planning again against the rows as they are now")


def refuse_if_blocked(plan: Plan) -> None:
    """Raise if the plan has conflicts or errors that no flag can override."""
    if plan.conflicts:
        raise OwnershipConflict(plan.conflicts, plan.owner)
    if plan.errors:
        raise PlanRefused("; ".join(plan.errors))


def apply_plan(
    conn: psycopg.Connection[Any],
    desired: Desired,
    *,
    owner: str,
    adopt: bool = False,
    allow_empty: bool = False,
    max_deletes: int = 10,
) -> Plan:
    """Recompute the plan under the lock, check it, execute it, commit; return what was applied."""
    with conn.transaction():
        _lock(conn)
        actual = fetch_rows(conn)
        plan = make_plan(desired.rows, actual, owner=owner, adopt=adopt)
        refuse_if_blocked(plan)
        guards.check(
            plan,
            desired_count=len(desired.rows),
            owned_count=sum(1 for r in actual if r.owner == owner),
            allow_empty=allow_empty,
            max_deletes=max_deletes,
        )
        execute_plan(conn, plan)
        if not plan.empty:  # delivered at commit: every replica's timer resyncs at once
            notify_changed(conn, owner)
    return plan
