"""Safety guards: what refuses a whole apply, and the override that works for who refused. Pure.

``evaluate`` judges a plan and returns a ``Refusal`` (or ``None``); ``invalid`` wraps a folder that
does not load, which has no plan to judge. ``check`` raises the refusal as ``GuardRefused``.
Apply (``store.applying``) calls ``check`` on the plan computed inside the lock, before executing
anything; ``reconcile --dry-run`` calls ``evaluate`` on the plan it renders, so a preview says
what apply would do and exits as it would (3). The daemon words the same refusal for itself:
its overrides are settings (``RECONCILER_MAX_DELETES``), not the flags of ``reconcile apply``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from reconciler.errors import GuardRefused
from reconciler.model.plans import Op, Plan

__all__ = ["Command", "Guard", "Refusal", "check", "evaluate", "invalid"]


class Guard(StrEnum):
    """Which guard refused; the ``guard`` of a plan's JSON ``refused`` field."""

    INVALID_FOLDER = "invalid_folder"  # a file does not parse or validate; the folder is unreadable
    EMPTY_FOLDER = "empty_folder"
    MAX_DELETES = "max_deletes"


class Command(StrEnum):
    """Who the refusal is worded for: each names the override that works for it."""

    APPLY = "apply"
    SERVE = "serve"
    PLAN = "plan"  # a preview: both, since a merged folder may be applied by either


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why applying must not happen; ``needed`` is the limit that would let it (deletes)."""

    guard: Guard
    reason: str
    needed: int = 0

    def message(self, command: Command) -> str:
        """The reason, then what to do about it, for ``command``."""
        if self.guard is Guard.INVALID_FOLDER:
            return self.reason
        return f"{self.reason}. {_OVERRIDES[self.guard][command].format(n=self.needed)}"


_OVERRIDES = {
    Guard.EMPTY_FOLDER: {
        Command.APPLY: "If that is what you want, run `reconcile apply --allow-empty`",
        Command.SERVE: (
            "Nothing was applied; if that is what you want, set RECONCILER_ALLOW_EMPTY=true "
            "(or start `reconcile serve --allow-empty`)"
        ),
        Command.PLAN: (
            "Apply would refuse it; if that is what you want, run `reconcile apply "
            "--allow-empty`, or for the daemon set RECONCILER_ALLOW_EMPTY=true "
            "(`reconcile serve --allow-empty`)"
        ),
    },
    Guard.MAX_DELETES: {
        Command.APPLY: (
            "Review it with `reconcile --dry-run`, then run `reconcile apply --max-deletes {n}` "
            "to allow it"
        ),
        Command.SERVE: (
            "Nothing was applied; review it with `reconcile --dry-run`, then set "
            "RECONCILER_MAX_DELETES={n} (or start `reconcile serve --max-deletes {n}`) to allow it"
        ),
        Command.PLAN: (
            "Apply would refuse it; to allow it, run `reconcile apply --max-deletes {n}`, or for "
            "the daemon set RECONCILER_MAX_DELETES={n} (`reconcile serve --max-deletes {n}`)"
        ),
    },
}


def evaluate(
    plan: Plan, *, desired_count: int, owned_count: int, allow_empty: bool, max_deletes: int
) -> Refusal | None:
    """The guard that refuses ``plan``, if one does.

    ``desired_count`` rows are declared; ``owned_count`` rows of the plan's owner exist.
    """
    if desired_count == 0 and owned_count > 0 and not allow_empty:
        return Refusal(
            Guard.EMPTY_FOLDER,
            f"the folder declares nothing, but {owned_count} row(s) owned by {plan.owner!r} "
            "exist: applying would delete them all",
        )
    deletes = plan.count(Op.DELETE)
    if deletes > max_deletes:
        return Refusal(
            Guard.MAX_DELETES,
            f"the plan deletes {deletes} rows, more than the limit of {max_deletes}",
            needed=deletes,
        )
    return None


def invalid(message: str) -> Refusal:
    """The refusal of a folder that does not load (``message`` lists why): no plan to judge."""
    return Refusal(Guard.INVALID_FOLDER, message)


def check(
    plan: Plan, *, desired_count: int, owned_count: int, allow_empty: bool, max_deletes: int
) -> None:
    """Raise ``GuardRefused`` if the plan must not be applied as it stands.

    The message names apply's override; ``daemon_message`` the daemon's.
    """
    refusal = evaluate(
        plan,
        desired_count=desired_count,
        owned_count=owned_count,
        allow_empty=allow_empty,
        max_deletes=max_deletes,
    )
    if refusal is not None:
        raise GuardRefused(
            refusal.message(Command.APPLY), daemon_message=refusal.message(Command.SERVE)
        )
