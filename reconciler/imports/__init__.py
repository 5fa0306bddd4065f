"""The import engine: sources (local, SFTP), COPY streaming, job runs and callbacks."""

from __future__ import annotations

__all__: list[str] = []  # the modules are the surface: import them by name
