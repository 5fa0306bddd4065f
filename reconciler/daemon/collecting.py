"""The per-schedule metrics, read from the database at each scrape, so every replica agrees.

``metrics.Metrics.watch_schedules`` registers one ``ScheduleCollector`` once the database is
known (the timer calls it). Each scrape reads every schedule of the owner in one query
(``store.statistics.schedule_gauges``) and the daemon's state (``store.daemon_state``), and
yields a few gauges per schedule: its last success, the status of its latest run, its period
and its next run. Values come from the rows, not from what this replica happened to run, so a
restart or a failover changes nothing, and a deleted schedule's series are gone at the next
scrape. Scrapes within a second share one reading; while the database does not answer, the
families are empty (``reconcile_database_up`` says why) and a new attempt waits a few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from reconciler.errors import ReconcileError
from reconciler.logs import get_logger
from reconciler.model.timing import next_fire_times

if TYPE_CHECKING:
    import psycopg

    from reconciler.store.statistics import ScheduleGauges

__all__ = ["ScheduleCollector"]

_log = get_logger("reconciler.daemon")
_FRESH_SECONDS = 1.0  # scrapes this close together (two Prometheus servers) share one reading
_RETRY_SECONDS = 5.0  # after a failed reading: a scrape must not wait on a dead server each time
_STATEMENT_TIMEOUT = "5s"  # well within Prometheus' default scrape timeout of 10 s


Sample = tuple[tuple[str, ...], float]
# key, name, help, label names: the families, in the order they are exported.
_FAMILIES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("success", "reconcile_last_success_timestamp_seconds",
     "When the schedule's latest successful run ended", ("schedule",)),
    ("status", "reconcile_last_run_status",
     "1 for the status of the schedule's latest run that ended", ("schedule", "status")),
    ("period", "reconcile_schedule_period_seconds",
     "Seconds between fire times (a cron: between its next two)", ("schedule",)),
    ("next", "reconcile_next_run_timestamp_seconds",
     "The schedule's next run, while it is enabled", ("schedule",)),
    ("error", "reconcile_config_error_since_timestamp_seconds",
     "Since when loads of the schedules folder fail (absent while it applies)", ()),
)  # fmt: skip


def _escape(value: str) -> str:
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _exposition(samples: dict[str, list[Sample]]) -> bytes:
    """The families in Prometheus text: 40,000 samples in a few tens of milliseconds, where
    ``generate_latest``'s general path (names and labels checked and escaped per sample) takes
    several times that."""
    out: list[str] = []
    for key, name, text, labels in _FAMILIES:
        out.append(f"# HELP {name} {text}\n# TYPE {name} gauge\n")
        for values, value in samples.get(key, ()):
            if len(values) == 1:  # the usual one, the schedule: no generator, no join
                out.append(f'{name}{{{labels[0]}="{_escape(values[0])}"}} {value!r}\n')
                continue
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(labels, values, strict=True))
            out.append(f"{name}{{{inner}}} {value!r}\n" if inner else f"{name} {value!r}\n")
    return "".join(out).encode()


_EMPTY = _exposition({})


@dataclass(frozen=True, slots=True)
class _Reading:
    samples: dict[str, list[Sample]]
    text: bytes


class ScheduleCollector(Collector):
    """Yields the per-schedule gauges of ``owner``'s schedules from the database at ``url``;
    with no ``url`` (not connected yet), the families without samples."""

    def __init__(self, url: str | None = None, owner: str = "") -> None:
        self._url, self._owner = url, owner
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._reading: _Reading | None = None
        self._read_at = 0.0
        self._failed_at = -_RETRY_SECONDS
        self._periods: dict[tuple[str, str], tuple[float | None, datetime]] = {}

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Registering asks for the names: no database query then.
        return self._families({})

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reading = self._read()
        yield from self._families({} if reading is None else reading.samples)

    def exposition(self) -> bytes:
        """What ``collect`` yields, as Prometheus text (``metrics.Metrics.render``)."""
        reading = self._read()
        return _EMPTY if reading is None else reading.text

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @staticmethod
    def _families(samples: dict[str, list[Sample]]) -> list[GaugeMetricFamily]:
        families = []
        for key, name, text, labels in _FAMILIES:
            family = GaugeMetricFamily(name, text, labels=list(labels))
            for values, value in samples.get(key, ()):
                family.add_metric(list(values), value)
            families.append(family)
        return families

    def _samples(
        self, rows: list[ScheduleGauges], error_at: datetime | None, now: datetime
    ) -> dict[str, list[Sample]]:
        samples: dict[str, list[Sample]] = {key: [] for key, *_ in _FAMILIES}
        for row in rows:
            labels = (row.name,)
            if row.last_success_at is not None:
                samples["success"].append((labels, row.last_success_at.timestamp()))
            if row.last_status is not None:
                samples["status"].append(((row.name, row.last_status), 1.0))
            seconds = self._period(row, now)
            if seconds is not None:
                samples["period"].append((labels, seconds))
            if row.next_run_at is not None:
                samples["next"].append((labels, row.next_run_at.timestamp()))
        if error_at is not None:
            samples["error"].append(((), error_at.timestamp()))
        return samples

    def _period(self, row: ScheduleGauges, now: datetime) -> float | None:
        """The row's period: an interval's own; a cron's gap between its next two fire times,
        kept until the first of them (10,000 schedules share a few crons)."""
        if row.interval_seconds is not None:
            return float(row.interval_seconds)
        if row.cron_expression is None:
            return None
        key = (row.cron_expression, row.timezone)
        cached = self._periods.get(key)
        if cached is None or now >= cached[1]:
            try:
                times = next_fire_times(cron=row.cron_expression, interval_seconds=None,
                                        timezone=row.timezone, after=now, count=2)  # fmt: skip
            except ValueError:  # a row edited by hand into timing we cannot read (timer logs it)
                times = []
            if len(times) == 2:
                cached = ((times[1] - times[0]).total_seconds(), times[0])
            else:  # fires at most once more: no period; looked at again at the next scrape
                cached = (None, now)
            self._periods[key] = cached
        return cached[0]

    def _read(self) -> _Reading | None:
        if self._url is None:
            return None
        with self._lock:  # concurrent scrapes: one reads, the others take its reading
            now = time.monotonic()
            if self._reading is not None and now - self._read_at < _FRESH_SECONDS:
                return self._reading
            if now - self._failed_at < _RETRY_SECONDS:
                return None
            try:
                self._reading = self._query()
            except Exception as exc:  # psycopg or StoreError: the scrape still answers
                message = exc.message if isinstance(exc, ReconcileError) else str(exc)
                _log.warning("cannot read the schedules for /metrics",
                             error=" ".join(message.split()))  # fmt: skip
                self._failed_at, self._reading = now, None
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                return None
            self._read_at = now
            return self._reading

    def _query(self) -> _Reading:
        from reconciler.store.connecting import connect
        from reconciler.store.daemon_state import read_state
        from reconciler.store.statistics import schedule_gauges

        assert self._url is not None
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self._url, autocommit=True)
            self._conn.execute(f"SET statement_timeout = '{_STATEMENT_TIMEOUT}'")
        with self._conn.transaction():
            rows = schedule_gauges(self._conn, self._owner)
            state = read_state(self._conn, self._owner)
        error_at = state.config_error_at if state is not None and state.config_error else None
        samples = self._samples(rows, error_at, datetime.now(UTC))
        return _Reading(samples, _exposition(samples))
