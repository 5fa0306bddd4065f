"""One module per group of commands; ``reconciler.cli`` imports them lazily by name."""

from __future__ import annotations

__all__: list[str] = []  # the modules are the surface: import them by name
