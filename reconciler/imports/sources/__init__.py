"""Where import data comes from: a registry of source kinds, one module each.

A kind is one class plus one function registered for the spec type it reads, in the manner of
alembic's ``Operations.implementation_for``: ``local`` registers for ``LocalFiles`` (a schedule's
``local_files``), ``sftp`` for ``Sftp`` (the project's ``sftp`` with the schedule's override).
``imports.runs`` calls ``open_source(spec, settings)``, which dispatches on the spec's type; a new
kind is a new module listed in ``_KINDS``, not a branch anywhere else. A kind's module is imported
when a spec of its type is first opened, so paramiko (a tenth of a second, 17 MB) is loaded only
by runs that read SFTP.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler.errors import SourceError

if TYPE_CHECKING:
    from reconciler.model.files import Source
    from reconciler.settings import Settings

__all__ = ["implementation_for", "open_source"]

# The spec type's name -> the module that registers its opener.
_KINDS = {
    "LocalFiles": "reconciler.imports.sources.local",
    "Sftp": "reconciler.imports.sources.sftp",
}
_Spec = TypeVar("_Spec")
Opener = Callable[[Any, "Settings"], "Source"]
_OPENERS: dict[type, Opener] = {}


def implementation_for(
    spec_type: type[_Spec],
) -> Callable[[Callable[[_Spec, Settings], Source]], Callable[[_Spec, Settings], Source]]:
    """Register the decorated function as the opener of sources described by ``spec_type``."""

    def register(
        opener: Callable[[_Spec, Settings], Source],
    ) -> Callable[[_Spec, Settings], Source]:
        _OPENERS[spec_type] = opener
        return opener

    return register


def open_source(spec: object, settings: Settings) -> Source:
    """An open source for ``spec``; ``SourceError`` (or ``HostKeyError``) if it cannot be had."""
    module = _KINDS.get(type(spec).__name__)
    if module is not None:
        importlib.import_module(module)
    opener = _OPENERS.get(type(spec))
    if opener is None:
        raise SourceError(f"no source kind reads {type(spec).__name__}")
    return opener(spec, settings)
