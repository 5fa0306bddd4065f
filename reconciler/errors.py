"""The exception tree of reconcile: every error the program raises on purpose.

Modules that talk to other libraries (PostgreSQL, SFTP, the file system) translate those libraries'
exceptions into these at the seam (``raise StoreError(...) from exc``); the CLI catches
``ReconcileError`` once, prints ``error: <message>`` and exits with ``exit_code``.

    ReconcileError                 exit 1 unless noted
    ├── UsageError                 a flag, setting or argument is wrong
    ├── InvalidDocuments           the folder has parse or validation findings
    ├── NotFound                   a named schedule or project does not exist
    ├── GuardRefused               a safety guard refused the apply (exit 3)
    ├── OwnershipConflict          a name belongs to a row this reconciler does not own
    ├── PlanRefused                the plan would break rows it must not touch
    ├── StoreError                 PostgreSQL failed or is unreachable (retryable)
    │   └── EmbeddedServerError    the embedded PostgreSQL could not start
    ├── SecretError                a ${VAR} reference is not set at run time
    ├── TargetError                an import's target table, columns or key are unusable
    ├── DataError                  a file's content cannot be loaded as declared (with its line)
    └── SourceError                a local or SFTP source failed (retryable)
        └── HostKeyError           an SFTP host key is unknown or changed

    Terminated (a BaseException)   SIGTERM stopped a command: a run records its job failed
                                   ("interrupted") and rolls back, as for Ctrl-C (exit 143)

Each error builds its own message from its fields and says whether retrying can help.
A finding's text shows the path and message it holds through ``escaping.terminal``: a file name
with a newline or an ESC cannot fake a line of output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.escaping import terminal

__all__ = [
    "EXIT_CHANGES",
    "EXIT_ERROR",
    "EXIT_GUARD",
    "EXIT_OK",
    "DataError",
    "EmbeddedServerError",
    "Finding",
    "GuardRefused",
    "HostKeyError",
    "InvalidDocuments",
    "NotFound",
    "OwnershipConflict",
    "PlanRefused",
    "ReconcileError",
    "SecretError",
    "SourceError",
    "StoreError",
    "TargetError",
    "Terminated",
    "UsageError",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_GUARD = 3


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem in one document, located for an editor: ``path:line:col: message``.

    ``line`` and ``column`` are 1-based; 0 means the finding concerns the whole file.
    """

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        path, message = terminal(self.path), terminal(self.message)
        if self.line:
            return f"{path}:{self.line}:{self.column}: {message}"
        return f"{path}: {message}"


class ReconcileError(Exception):
    """Base of every error reconcile raises on purpose."""

    exit_code: int = EXIT_ERROR
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(ReconcileError):
    """A command-line flag, setting or argument is wrong; fix the invocation."""


class InvalidDocuments(ReconcileError):
    """The schedules folder has findings; nothing is applied from an invalid folder."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = tuple(findings)
        count = len(self.findings)
        noun = "problem" if count == 1 else "problems"
        super().__init__(
            "\n".join(str(f) for f in self.findings)
            + f"\n{count} {noun} found; nothing was changed"
        )


class NotFound(ReconcileError):
    """A named object does not exist where it was looked for."""

    def __init__(self, kind: str, name: str, where: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} {name!r} not found in {where}")


class GuardRefused(ReconcileError):
    """A safety guard refused the whole apply; the message names the override.

    ``daemon_message`` is the same refusal worded for ``reconcile serve``, whose overrides are
    settings rather than ``reconcile apply``'s flags (the message itself when none differs).
    """

    exit_code = 3

    def __init__(self, message: str, *, daemon_message: str | None = None) -> None:
        super().__init__(message)
        self.daemon_message = daemon_message or message


class OwnershipConflict(ReconcileError):
    """A declared name clashes with a row that another owner (or the old API) created."""

    def __init__(self, clashes: Sequence[str], owner: str) -> None:
        self.clashes = tuple(clashes)
        listed = ", ".join(self.clashes)
        super().__init__(
            f"{listed} already exist(s) in the database and are not owned by {owner!r}; "
            "run `reconcile export` to review them, then apply with --adopt to take ownership"
        )


class PlanRefused(ReconcileError):
    """The plan cannot be applied as it stands (it would take another owner's rows along)."""


class StoreError(ReconcileError):
    """PostgreSQL failed or could not be reached; retrying may help."""

    retryable = True


class EmbeddedServerError(StoreError):
    """The embedded PostgreSQL server could not be started."""


class SecretError(ReconcileError):
    """A ``${VAR}`` reference names an environment variable that is not set."""

    def __init__(self, variable: str, where: str) -> None:
        self.variable = variable
        super().__init__(
            f"{where}: environment variable {variable} is not set; export it and retry"
        )


class TargetError(ReconcileError):
    """An import's target table, columns, key or privileges are not usable as declared."""


class DataError(ReconcileError):
    """A file's content cannot be loaded as declared: its header, encoding or a record.

    ``line`` is the 1-based physical line of the file where the problem lies, when known;
    ``record`` the 1-based data record (after any header) when only that is known yet.
    """

    def __init__(self, message: str, *, line: int | None = None, record: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.record = record


class SourceError(ReconcileError):
    """A local or SFTP source could not be read; retrying may help."""

    retryable = True


class HostKeyError(SourceError):
    """The SFTP server's host key is unknown or has changed; the connection was refused."""

    retryable = False


class Terminated(BaseException):
    """A signal stopped the command; raised by its handler wherever the main thread is.

    A ``BaseException``, like ``KeyboardInterrupt``: the code that records a run's end records it
    failed as ``interrupted`` and lets it through, and no ``except Exception`` swallows it.
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signal = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(self.signal)
