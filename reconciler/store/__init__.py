"""PostgreSQL: schema and migrations, plan rows, schedule and job rows, liveness, the import ledger,
locks, and the embedded default server. Only this package writes SQL on the management tables."""

from __future__ import annotations

__all__: list[str] = []  # the modules are the surface: import them by name
