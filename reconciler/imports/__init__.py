"""The import engine, by concern: ``sources`` (where files come from), ``engine`` (COPY), ``runs``.

``runs`` drives the other two, which do not know each other; ``secrets`` serves them all. The
layers are pinned by a contract in ``pyproject.toml``.
"""

from __future__ import annotations

__all__: list[str] = []  # the modules are the surface: import them by name
