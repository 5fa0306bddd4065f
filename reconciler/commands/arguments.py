"""What each command is asked to do, as values: one small frozen dataclass per command.

``reconciler.cli`` builds them from argparse's result in one place (``_arguments``) and hands
each command function its own, beside ``Settings``; the functions never see argparse, so any
other caller builds the same values. Flags that are settings (the folder, the database, the
output format, the guards) are not repeated here: they are in ``Settings``. A command that takes
nothing else (``validate``, ``schema``, ``serve``) takes ``NoArguments``.

Imported by the CLI for every command, ``validate`` included: it imports nothing but dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.commands.completing import Vocabulary

__all__ = [
    "CompletionArguments",
    "ExportArguments",
    "ForgetArguments",
    "HistoryArguments",
    "NextArguments",
    "NoArguments",
    "PlanArguments",
    "RunArguments",
    "SqlArguments",
    "StatusArguments",
]


@dataclass(frozen=True, slots=True)
class NoArguments:
    """A command whose every input is a setting."""


@dataclass(frozen=True, slots=True)
class PlanArguments:
    """``plan`` (``--dry-run``) and ``apply``.

    ``against`` is the folder ``plan --against`` plans against offline (``apply`` refuses it);
    ``plan_file`` where ``--output markdown`` saves the whole plan (``None``: the default name).
    """

    detailed_exitcode: bool = False
    adopt: bool = False
    against: str | None = None
    plan_file: str | None = None


@dataclass(frozen=True, slots=True)
class StatusArguments:
    """``status [NAME] [--project NAME] [--failing]``."""

    name: str | None = None
    project: str | None = None
    failing: bool = False


@dataclass(frozen=True, slots=True)
class ExportArguments:
    """``export [--out DIR]``: ``None`` prints the documents."""

    out: str | None = None


@dataclass(frozen=True, slots=True)
class RunArguments:
    """``run NAME``."""

    name: str


@dataclass(frozen=True, slots=True)
class HistoryArguments:
    """``history NAME [--limit N]``."""

    name: str
    limit: int = 20


@dataclass(frozen=True, slots=True)
class NextArguments:
    """``next NAME [-n COUNT]``."""

    name: str
    count: int = 5


@dataclass(frozen=True, slots=True)
class ForgetArguments:
    """``forget PROJECT [--path GLOB]``."""

    project: str
    path: str | None = None


@dataclass(frozen=True, slots=True)
class SqlArguments:
    """``sql -c SQL`` or ``sql -f FILE``: the command checks that exactly one is given."""

    statements: str | None = None
    file: str | None = None


@dataclass(frozen=True, slots=True)
class CompletionArguments:
    """``completion SHELL``, and the command line's vocabulary, read from the CLI's parser."""

    shell: str
    vocabulary: Vocabulary
