"""Pydantic's validation errors, retold for the person who wrote the YAML.

``model.loading`` validates each document with ``specs.document_adapter()`` and passes every error
here. ``explain`` returns where in the document the problem is and a short message that says what
to do: ``spec: unknown key 'crn' (did you mean 'cron'?)``. A value written under a secret key is
never repeated in a message, and any other is quoted short (``scalars.excerpt``). Pure.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from reconciler.model import specs
from reconciler.model.scalars import MAX_SHOWN, excerpt, is_secret_key

__all__ = ["Explanation", "dotted", "explain"]

_KINDS: dict[str, type[BaseModel]] = {
    "Project": specs.ProjectDocument,
    "Schedule": specs.ScheduleDocument,
}
_QUOTED = re.compile(r"'([^']*)'")
_PATTERN_HINTS = {"callback_url": "must be an http:// or https:// URL"}


@dataclass(frozen=True, slots=True)
class Explanation:
    """A problem at ``path`` in the document; ``at_key`` points at the key rather than its value."""

    path: tuple[str | int, ...]
    at_key: bool
    message: str


def dotted(path: tuple[str | int, ...]) -> str:
    """``spec.local_files[0]`` for ``("spec", "local_files", 0)``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def explain(error: Mapping[str, Any]) -> Explanation:
    """Where and what one pydantic error (from ``ValidationError.errors()``) is about."""
    kind = error["type"]
    loc = tuple(error["loc"])
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        return _bad_kind(error)
    model = _KINDS.get(str(loc[0])) if loc else None
    path = loc[1:] if model is not None else loc
    if not path:  # about the whole document: only non-mappings, which the loader catches first
        return Explanation((), True, str(error.get("msg", kind)))
    if kind == "extra_forbidden":
        key = str(path[-1])
        allowed = _fields(model, _names(path[:-1])) if model is not None else ()
        return Explanation(path, True, _prefixed(path[:-1], _unknown(key, allowed)))
    if kind == "missing":
        hint = f": add apiVersion: {specs.API_VERSION}" if path == ("apiVersion",) else ""
        message = f"missing required key {path[-1]!r}{hint}"
        return Explanation(path[:-1], True, _prefixed(path[:-1], message))
    secret = any(is_secret_key(part) for part in path)
    return Explanation(path, False, _prefixed(path, _message(kind, error, path, secret)))


def _bad_kind(error: Mapping[str, Any]) -> Explanation:
    document = error.get("input")
    if not isinstance(document, dict) or "kind" not in document:
        return Explanation((), True, "missing required key 'kind' (Project or Schedule)")
    tag = document["kind"]
    if isinstance(tag, str):
        return Explanation(("kind",), False, f"kind: {_one_of(tag, list(_KINDS))}")
    return Explanation(
        ("kind",), False, f"kind: must be 'Project' or 'Schedule', got {_describe(tag)}"
    )


def _message(kind: str, error: Mapping[str, Any], path: tuple[Any, ...], secret: bool) -> str:  # noqa: PLR0911
    ctx = error.get("ctx") or {}
    value = error.get("input")
    got = "" if secret else f", got {_describe(value)}"
    if kind == "bool_type":
        return f"expected true or false{got}"
    if kind == "string_type":
        quote = ": quote it" if isinstance(value, bool | int | float) else ""
        return f"expected text{got}{quote}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        unquote = ": remove the quotes" if isinstance(value, str) and value.isdigit() else ""
        return f"expected a whole number{got}{unquote}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys to values{got}"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list{got}"
    if kind == "literal_error":
        options = _QUOTED.findall(str(ctx.get("expected", "")))
        if secret or not isinstance(value, str):
            return f"must be one of {', '.join(map(repr, options))}{got}"
        return _one_of(value, options)
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error.get("msg", "")))
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} item(s)"
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = "at least" if kind == "greater_than_equal" else "at most"
        limit = ctx.get("ge", ctx.get("le"))
        return f"must be {bound} {limit}{got}"
    if kind == "string_pattern_mismatch":
        field = next((p for p in reversed(path) if isinstance(p, str)), "")
        hint = _PATTERN_HINTS.get(field, f"must match {ctx.get('pattern')}")
        return f"{hint}{got}"
    return str(error.get("msg", kind))


def _prefixed(path: tuple[Any, ...], message: str) -> str:
    return f"{dotted(path)}: {message}" if path else message


def _one_of(value: str, options: list[str]) -> str:
    listed = ", ".join(repr(o) for o in options)
    close = difflib.get_close_matches(value, options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{_describe(value)} is not one of {listed}{hint}"


def _unknown(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    shown = excerpt(key)
    if close:
        return f"unknown key {shown} (did you mean {close[0]!r}?)"
    if allowed:
        return f"unknown key {shown} (allowed: {', '.join(allowed)})"
    return f"unknown key {shown}"


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        # str() of an int past 4300 digits raises; the loader never passes one, but never crash.
        text = "..." if isinstance(value, int) and value.bit_length() > 1000 else str(value)
        return f"the number {text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + '...'}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return excerpt(str(value))


def _names(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(p for p in path if isinstance(p, str))


@functools.cache
def _fields(model: type[BaseModel], path: tuple[str, ...]) -> tuple[str, ...]:
    """The keys allowed at ``path`` inside ``model`` (empty when it is not a model there)."""
    current: type[BaseModel] | None = model
    for name in path:
        info = current.model_fields.get(name) if current is not None else None
        current = _model_in(info.annotation) if info is not None else None
    return tuple(current.model_fields) if current is not None else ()


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
