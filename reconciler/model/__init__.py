"""The pure core: documents, loading, cron and time zones, plans, rendering, run results and the
files a source offers. No I/O here: no database, SFTP, environment, files or log output."""

from __future__ import annotations

__all__: list[str] = []  # the modules are the surface: import them by name
