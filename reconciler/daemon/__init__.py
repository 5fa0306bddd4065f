"""``reconcile serve``: the daemon that applies the folder, keeps time and runs the imports.

``serving`` wires the parts: ``leading`` (one replica watches and applies), ``timing`` (every
replica keeps APScheduler armed from ``cpi_schedules``), ``working`` (the bounded pool that claims
and runs occurrences), ``watching`` (file-system events) and ``http`` (health and metrics).
"""

__all__: list[str] = []
