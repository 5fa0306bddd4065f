"""reconcile: declare recurring CSV -> PostgreSQL imports in Git; a reconciler makes them so."""

from __future__ import annotations

from reconciler.errors import ReconcileError

__all__ = ["ReconcileError", "__version__"]

__version__ = "0.1.0"
