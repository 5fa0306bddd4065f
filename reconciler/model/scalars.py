"""What a YAML scalar means: YAML 1.2 core resolution, with YAML 1.1's surprises turned into advice.

``model.parsing`` calls ``resolve`` for scalar values that are not plain words. A value that YAML
1.1 tools (PyYAML's own loader, many editors and CI linters) would read differently from YAML 1.2
is kept as text and reported, so that one file never means two things to two tools:

- plain ``true``/``false`` (any case) are booleans; ``null``, ``~`` (any case) and nothing are null;
- decimal, ``0x`` and ``0o`` integers and decimal floats (with ``.inf``, ``.nan``) are numbers;
- plain ``yes``/``no``/``on``/``off``/``y``/``n``, base-60 numbers (``06:00``, ``1:30:00``),
  numbers with underscores (``1_000``) and integers with a leading zero (``0755``) are problems;
- quoted and block scalars are always text; ``!!str``/``!`` force text, ``!!int`` etc. are checked;
- integers longer than ``MAX_DIGITS`` digits are problems: no setting takes one, and converting
  thousands of digits is slow (Python refuses past 4,300).

Messages never repeat a value written under a secret key (``password``, any ``*_url``), and
quote any other value through ``excerpt``: a few dozen characters, never a whole file; a list of
names from the input (a CSV header's columns) goes through ``listed``: a few names, then how many
more. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "MAX_DIGITS",
    "MAX_LISTED",
    "MAX_SHOWN",
    "NUMBER_START",
    "excerpt",
    "is_secret_key",
    "listed",
    "resolve",
]

MAX_SHOWN = 40  # characters of a value a message may quote; the rest is cut
MAX_LISTED = 10  # names a message may list; the rest are counted
MAX_DIGITS = 30  # far more than any setting takes (the largest holds 10 digits)

NUMBER_START = frozenset("0123456789+-.")  # plain scalars not starting so and longer than 5: text
_NUMBER_END = frozenset("0123456789._abcdefABCDEFnN")  # how numbers end: hex, .inf, .nan too
_WORDS: dict[str, Any] = {"true": True, "false": False, "null": None, "~": None}
_YAML11_BOOLS = frozenset({"yes", "no", "on", "off", "y", "n"})
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")
_HEX_OR_OCTAL = re.compile(r"0x[0-9a-fA-F]+\Z|0o[0-7]+\Z")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9]+\Z")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z")
_SPECIAL_FLOAT = {".inf": float("inf"), "+.inf": float("inf"), "-.inf": float("-inf")}
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?\Z")
_UNDERSCORED = re.compile(r"[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?\Z")
# URLs carry passwords and tokens (a webhook's path often is one): never quote them back either.
_SECRET_WORDS = ("pass", "secret", "token", "credential", "url")
_STR_TAGS = frozenset({"!", "tag:yaml.org,2002:str"})
_TYPED_TAGS: dict[str, type] = {
    "tag:yaml.org,2002:int": int,
    "tag:yaml.org,2002:float": float,
    "tag:yaml.org,2002:bool": bool,
    "tag:yaml.org,2002:null": type(None),
}
_secret_keys: dict[str, bool] = {}


def is_secret_key(key: object) -> bool:
    """Whether values under this key may be secrets, and so must never be quoted back."""
    if not isinstance(key, str):
        return False
    known = _secret_keys.get(key)
    if known is None:
        known = any(word in key.lower() for word in _SECRET_WORDS)
        if len(_secret_keys) < 4096:  # the keys people write are few; never grow without bound
            _secret_keys[key] = known
    return known


def excerpt(text: str) -> str:
    """``text`` quoted for a message, cut to ``MAX_SHOWN`` characters with ``...``.

    A file that is not YAML (a symlinked ``.env``) reads as one long value; a finding must name
    it, not print it into a CI log.
    """
    return repr(_cut(text))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def listed(names: Iterable[str], limit: int = MAX_LISTED) -> str:
    """``a, b, c and 7 more``: at most ``limit`` names, each cut to ``MAX_SHOWN`` characters.

    A message that echoes names from the input (a header of 100,000 columns) stays a few hundred
    characters, whatever the input.
    """
    shown: list[str] = []
    more = 0
    for name in names:
        if len(shown) < limit:
            shown.append(_cut(name))
        else:
            more += 1
    return ", ".join(shown) + (f" and {more} more" if more else "")


def resolve(text: str, style: str | None, tag: str | None, key: object) -> tuple[Any, str]:
    """The value of a scalar written under ``key``, and a problem message ('' when none)."""
    if tag is None:
        if style:
            return text, ""
        value, code = _plain(text)
    elif tag in _STR_TAGS:
        return text, ""
    elif tag in _TYPED_TAGS:
        wanted = _TYPED_TAGS[tag]
        value, code = _plain(text)
        if wanted is float and type(value) is int:
            value = float(value)
        if code != "huge" and (code or type(value) is not wanted):
            value, code = text, "tagged"
    else:
        return text, f"unsupported tag {excerpt(tag)}: remove it"
    if not code:
        return value, ""
    return text, _message(code, text, tag, secret=is_secret_key(key))


def _plain(text: str) -> tuple[Any, str]:
    if not text:
        return None, ""
    if text[0] in NUMBER_START:
        return _number(text)
    if len(text) <= 5:
        lowered = text.lower()
        if lowered in _WORDS:
            return _WORDS[lowered], ""
        if lowered in _YAML11_BOOLS:
            return text, "bool"
    return text, ""


def _number(text: str) -> tuple[Any, str]:  # noqa: PLR0911 -- one exit per reading
    if text[-1] not in _NUMBER_END:  # "2h", "300s", "0 0 * * *": durations and crons are text
        return text, ""
    if _DECIMAL.match(text):
        return (int(text), "") if len(text.lstrip("+-")) <= MAX_DIGITS else (text, "huge")
    if _LEADING_ZERO.match(text):
        return text, "octal"
    if _FLOAT.match(text):
        return float(text), ""
    if _HEX_OR_OCTAL.match(text):
        return (int(text, 0), "") if len(text) - 2 <= MAX_DIGITS else (text, "huge")
    lowered = text.lower()
    if lowered in _SPECIAL_FLOAT:
        return _SPECIAL_FLOAT[lowered], ""
    if lowered == ".nan":
        return float("nan"), ""
    if _SEXAGESIMAL.match(text):
        return text, "base60"
    if "_" in text and _UNDERSCORED.match(text):
        return text, "underscore"
    return text, ""


def _message(code: str, text: str, tag: str | None, *, secret: bool) -> str:
    shown = "this value" if secret else excerpt(text)
    if code == "huge":
        return "this number is far too large for any setting (none takes more than 2147483647)"
    if code == "bool":
        word = "" if secret else f" {text!r}"
        return f"ambiguous YAML 1.1 boolean{word}: write true or false, or quote it"
    if code == "octal":
        return (
            f"{shown} has a leading zero, which YAML 1.1 reads as an octal number: "
            "quote it, or write it without the zero"
        )
    if code == "tagged":
        return f"{shown} is not a valid {str(tag).rsplit(':', 1)[-1]}"
    number = _base60(text) if code == "base60" else text.replace("_", "")
    shown_number = "" if secret else f" {excerpt(number)[1:-1]}"
    return f"{shown} would be read as the number{shown_number} in YAML 1.1: quote it"


def _base60(text: str) -> str:
    sign = -1 if text.startswith("-") else 1
    total = 0.0
    for part in text.lstrip("+-").replace("_", "").split(":"):
        total = total * 60 + float(part)
    total *= sign
    return str(int(total)) if total.is_integer() else str(total)
