"""The COPY engine: CSV framing, streaming into COPY, and loading the files of one run."""

from __future__ import annotations

__all__: list[str] = []  # the modules are the surface: import them by name
