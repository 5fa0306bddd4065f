"""One run of a schedule: its rows, its source and target, its files, its job and its callback."""

from __future__ import annotations

__all__: list[str] = []  # the modules are the surface: import them by name
