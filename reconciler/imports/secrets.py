"""Resolving ``${VAR}`` secret references at the moment an import needs them.

Documents store references, never values (``model.specs`` refuses literals). The import engine calls
``resolve`` when a run starts (the SFTP password in ``imports.sources.sftp``, a target's
``database_url`` in ``imports.runs.resolving``); the value is registered with
``logs.register_secret`` so that it is masked in every log line, and it is never stored, planned or
sent anywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from reconciler import logs
from reconciler.errors import SecretError

__all__ = ["reference_name", "resolve"]

_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def reference_name(reference: str) -> str:
    """The variable named by ``${NAME}``; ``ValueError`` (without the text) for anything else."""
    match = _REFERENCE.match(reference)
    if match is None:
        # The text is not repeated: if it is not a reference it may be a pasted secret.
        raise ValueError("a secret must be a ${VAR} reference")
    return match.group(1)


def resolve(reference: str | None, *, environ: Mapping[str, str], where: str) -> str | None:
    """The value of the variable ``reference`` names; ``None`` for ``None``.

    An unset or empty variable raises ``SecretError(variable, where)``: an empty password or
    database URL is never what the user meant, and failing names the variable to export.
    """
    if reference is None:
        return None
    name = reference_name(reference)
    value = environ.get(name)
    if not value:
        raise SecretError(name, where)
    logs.register_secret(value)
    return value
