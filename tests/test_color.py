"""When output is coloured: on a terminal, unless NO_COLOR, TERM=dumb or --no-color says not."""

from __future__ import annotations

import io

import pytest

from reconciler.settings import load_settings


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


CASES = [
    # (id, on a terminal, environment, --no-color, coloured)
    ("a terminal", True, {"TERM": "xterm-256color"}, False, True),
    ("no TERM at all", True, {}, False, True),
    ("a pipe", False, {"TERM": "xterm"}, False, False),
    ("NO_COLOR", True, {"NO_COLOR": "1"}, False, False),
    ("NO_COLOR, empty", True, {"NO_COLOR": ""}, False, False),
    ("TERM=dumb", True, {"TERM": "dumb"}, False, False),
    ("--no-color", True, {"TERM": "xterm"}, True, False),
]


@pytest.mark.parametrize(
    ("tty", "environ", "no_color", "colored"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_color(
    tty: bool,
    environ: dict[str, str],
    no_color: bool,
    colored: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Colour needs a terminal that shows it and nobody saying no."""
    monkeypatch.setattr("sys.stdout", _Terminal() if tty else io.StringIO())
    settings = load_settings(color=False if no_color else None, environ=environ)
    assert settings.color is colored
