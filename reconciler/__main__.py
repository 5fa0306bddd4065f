"""``python -m reconciler``: the same as the ``reconcile`` console script."""

from __future__ import annotations

import sys

from reconciler.cli import main

__all__: list[str] = []

sys.exit(main())
