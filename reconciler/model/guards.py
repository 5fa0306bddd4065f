"""Safety guards: each refuses the whole apply with a message that names its override. Pure.

Apply calls ``check`` on the plan computed inside the lock, before executing anything.
"""

from __future__ import annotations

from reconciler.errors import GuardRefused
from reconciler.model.plans import Op, Plan

__all__ = ["check"]


def check(
    plan: Plan, *, desired_count: int, owned_count: int, allow_empty: bool, max_deletes: int
) -> None:
    """Raise ``GuardRefused`` if the plan must not be applied as it stands."""
    if desired_count == 0 and owned_count > 0 and not allow_empty:
        raise GuardRefused(
            f"the folder declares nothing, but {owned_count} row(s) owned by {plan.owner!r} "
            "exist: applying would delete them all. If that is what you want, pass --allow-empty"
        )
    deletes = plan.count(Op.DELETE)
    if deletes > max_deletes:
        raise GuardRefused(
            f"the plan deletes {deletes} rows, more than the limit of {max_deletes}; review it "
            f"with `reconcile --dry-run`, then pass --max-deletes {deletes} to allow it"
        )
