"""Benchmark: due occurrences under the claim-based scheduler ("after") and the one before it.

"before" is the scheduler at commit 4128c4c, the last commit before the claim-based one (each
replica armed one APScheduler job per schedule and raced the others for the job row); "after"
is the working tree. Both run in one invocation as real ``python -m reconciler serve`` processes
(their own HTTP port, ``RECONCILER_LOG_LEVEL=warning``): "before" from a ``git worktree add
--detach`` of that commit in the temporary folder (removed at exit), imported first through
``PYTHONPATH`` (the venv's editable install of the working tree comes after it on the path); the
run checks, with the daemons' own environment, that each side imports ``reconciler`` from its
tree. Every daemon runs in a temporary folder as its working directory.

Every scenario runs on a fresh database, once per side, one side after the other. Its schedules
(``local_files`` matching nothing, a target table created beforehand: each run is trivial) all
fire at one chosen minute (``M H * * *``, UTC), so no earlier occurrence overlaps the one
measured. The daemons must answer ``/readyz`` 200 and every schedule's ``next_run_at`` must be
that minute; when less than 5 s are left by then, the schedules move to a later minute.

Figures, from ``cpi_jobs`` rows of that one occurrence (``trigger = 'schedule'``):

- lateness: ``started_at - scheduled_for`` per job that ran (not ``missed`` nor ``skipped``);
  p50, p99 (nearest rank) and max. An occurrence without a started run when the wait ends (all
  finished, or the cap after the boundary) counts as later than the wait: a percentile that
  falls on one reads ``>cap``.
- missing: occurrences with no run started by the end of the wait; "claimed, not started" are
  those among them with a job row nevertheless. duplicates: (schedule, scheduled_for) pairs with
  more than one job, over every minute of that database. Both must be 0.
- share: each replica's part of the runs (``cpi_jobs.worker`` is ``host:pid``).
- last start: boundary -> the last run's ``started_at`` (the max lateness).
- CPU per run: user + system CPU of every serve process (``/proc/<pid>/stat``) from 0.5 s before
  the boundary until the poll (every 0.1 s) that sees the occurrence's last run finished,
  divided by the runs finished by then. The window also holds the daemons' periodic work.

Scenarios (default sizes; ``--quick``: 20, 100, 30, 100 schedules and a 30 s cap):

1. 100 due, 1 replica: p50/p99/max lateness (target p99 < 0.5 s); CPU per run (< 5 ms).
2. 1,000 due, 1 replica: p99 lateness (< 5 s); CPU per run (< 5 ms). The wait ends 90 s after
   the boundary at the latest.
3. 300 due, 3 replicas: p99 lateness (< 2 s); each replica's share (every one >= 20 %).
4. 1,000 due, 3 replicas, against scenario 2's single replica: p99 lateness and last start,
   and the ratios 1 replica / 3 replicas of both (target > 1: three replicas are faster).

Each figure prints before, after, the target, after/target, PASS or FAIL (of "after") and the
ratio before/after. Each run's details (statuses, runs per replica, CPU window, the daemons'
log lines at warning and above) are printed as it ends.

    python benchmarks/bench_due.py [--quick] [--sides before,after] [--scenarios 1,2,3,4]
                                   [--before-commit 4128c4c] [--cap SECONDS]
                                   [--log-level warning] [--log-dir DIR] [--database-url URL]

Without --database-url an embedded PostgreSQL is started in the temporary folder; with it, the
role needs CREATEDB (each run gets a database ``bench_due_*``, dropped afterwards). ``--log-dir``
keeps the daemons' logs (``--log-level info`` for a diagnostic run). The daemons are stopped and
the worktree removed on exit, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from bench_serve import (
    PROJECT,
    SCHEDULE,
    Report,
    Serve,
    _on_sigterm,
    _stop_all,
    fresh_database,
    percentile,
    report_logs,
    wait_for,
)
from embedded import database

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
LEAD = 20.0  # seconds from writing the schedules to their minute, at the least
MIN_LEAD = 5.0  # a minute closer than this once all is armed: the schedules move on
RAN = "status NOT IN ('missed', 'skipped') AND started_at IS NOT NULL"
PROGRESS = f"""
SELECT count(DISTINCT schedule_name) FILTER (WHERE status <> 'running'),
       count(DISTINCT schedule_name) FILTER (WHERE {RAN})
FROM cpi_jobs WHERE trigger = 'schedule' AND scheduled_for = %s
"""
JOBS = """
SELECT schedule_name, status, worker, started_at IS NOT NULL,
       extract(epoch FROM started_at - scheduled_for)::float8
FROM cpi_jobs WHERE trigger = 'schedule' AND scheduled_for = %s
"""
DUPLICATES = """
SELECT count(*) FROM (SELECT 1 FROM cpi_jobs WHERE trigger = 'schedule'
                      GROUP BY schedule_name, scheduled_for HAVING count(*) > 1) x
"""


# --- the two sides -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    name: str  # "before" or "after"
    tree: Path  # imported first (PYTHONPATH)
    label: str


def side_env(side: Side) -> dict[str, str]:
    """The environment without our settings, ``side.tree`` first on the import path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RECONCILER_") and k != "DATABASE_URL"
    }
    env["PYTHONPATH"] = os.pathsep.join([str(side.tree), *filter(None, [env.get("PYTHONPATH")])])
    return env


def check_import(side: Side, cwd: Path) -> str:
    """Where ``reconciler`` comes from with the daemons' environment; fails if not ``side.tree``."""
    out = subprocess.run(
        [sys.executable, "-c", "import reconciler; print(reconciler.__file__)"],
        cwd=cwd,
        env=side_env(side),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(side.tree.resolve()):
        raise RuntimeError(f"{side.name}: reconciler imported from {out}, not from {side.tree}")
    return out


def git_head() -> str:
    command = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


@contextmanager
def worktree(commit: str, work: Path) -> Iterator[Path]:
    """A detached worktree of ``commit`` under ``work``; removed afterwards."""
    path = work / f"tree-{commit}"
    git = ["git", "-C", str(REPO), "worktree"]
    subprocess.run([*git, "add", "--detach", str(path), commit], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run([*git, "remove", "--force", str(path)], check=False, capture_output=True)
        subprocess.run([*git, "prune"], check=False, capture_output=True)


class Daemon(Serve):
    """A ``Serve`` of one side: its ``reconciler`` from ``side.tree``, its cwd ``work``."""

    def __init__(
        self, work: Path, url: str, folder: Path, name: str, *, side: Side, log_level: str
    ) -> None:
        extra = {"PYTHONPATH": side_env(side)["PYTHONPATH"], "RECONCILER_LOG_LEVEL": log_level}
        super().__init__(work, url, folder, name, extra)

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far (``/proc/<pid>/stat`` fields 14 and 15)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


# --- one occurrence ----------------------------------------------------------------------------


@dataclass
class Outcome:
    """One side's measurement of one occurrence."""

    count: int
    waited: float  # boundary -> end of the wait, s
    late: list[float]  # per run started, s
    missing: int
    unstarted: int  # of ``missing``: a job row, never started
    duplicates: int
    statuses: Counter[str]
    shares: list[tuple[int, int]]  # (pid, runs) per replica
    cpu: float  # CPU seconds of every replica over the window
    window: float  # seconds
    finished: int  # runs finished in the window

    def lateness(self, p: float) -> Value:
        """The ``p``th percentile; a missing occurrence counts as later than the wait."""
        values = sorted(self.late) + [float("inf")] * self.missing
        if not values:
            return Value(None)
        x = percentile(values, p)
        return Value(self.waited, ">") if x == float("inf") else Value(x)


def one(conn: psycopg.Connection[Any], query: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return tuple(row)


def boundary_after(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0) + timedelta(minutes=1)


def write_schedules(folder: Path, count: int, at: datetime) -> None:
    docs = [PROJECT.format(name="due_project", table="public.bench_due")]
    cron = f"{at.minute} {at.hour} * * *"
    docs += [
        SCHEDULE.format(name=f"due-{i:04}", project="due_project", cron=cron) for i in range(count)
    ]
    (folder / "due.yaml").write_text("---\n".join(docs))


def armed(conn: psycopg.Connection[Any], daemons: list[Daemon], at: datetime, count: int) -> bool:
    for d in daemons:
        d.alive()
    row = one(conn, "SELECT count(*) FROM cpi_schedules WHERE next_run_at = %s", (at,))
    return bool(row[0] >= count)


def arm(conn: psycopg.Connection[Any], daemons: list[Daemon], folder: Path, count: int) -> datetime:
    """Every replica ready and every schedule's next run at one minute at least 5 s away."""
    began = time.monotonic()
    at = boundary_after(datetime.now(UTC) + timedelta(seconds=LEAD))
    write_schedules(folder, count, at)
    for d in daemons:
        wait_for(d.ready, timeout=300, every=0.1, what=f"/readyz of pid {d.process.pid}")
    ready = time.monotonic() - began
    while True:
        if armed(conn, daemons, at, count):
            if (at - datetime.now(UTC)).total_seconds() >= MIN_LEAD:
                print(
                    f"    ready after {ready:.1f} s, armed after {time.monotonic() - began:.1f} s"
                )
                return at
        elif (at - datetime.now(UTC)).total_seconds() >= MIN_LEAD:
            if time.monotonic() - began > 300:
                raise RuntimeError(f"next_run_at is not {at:%H:%M} for all after 300 s")
            time.sleep(0.2)
            continue
        print(f"    {at:%H:%M:%S} is too close; the schedules move on", flush=True)
        at = boundary_after(datetime.now(UTC) + timedelta(seconds=LEAD))
        write_schedules(folder, count, at)


def measure(
    conn: psycopg.Connection[Any], daemons: list[Daemon], at: datetime, count: int, cap: float
) -> Outcome:
    """Wait for the occurrence at ``at`` to finish (at most ``cap`` s after it); read its jobs."""
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds() - 0.5))
    cpu_before = sum(d.cpu_seconds() for d in daemons)
    began = time.monotonic()
    while True:
        done, _ = one(conn, PROGRESS, (at,))
        now = datetime.now(UTC)
        if done >= count or now >= at + timedelta(seconds=cap):
            break
        time.sleep(0.1)
    cpu = sum(d.cpu_seconds() for d in daemons) - cpu_before
    window = time.monotonic() - began
    rows = conn.execute(JOBS, (at,)).fetchall()
    ran = [r for r in rows if r[1] not in ("missed", "skipped") and r[3]]
    names = {r[0] for r in ran}
    per_worker = Counter(r[2] for r in ran)
    return Outcome(
        count=count,
        waited=(now - at).total_seconds(),
        late=[r[4] for r in ran],
        missing=count - len(names),
        unstarted=len({r[0] for r in rows if not r[3]} - names),
        duplicates=int(one(conn, DUPLICATES)[0]),
        statuses=Counter(r[1] for r in rows),
        shares=[(d.process.pid, per_worker_of(per_worker, d.process.pid)) for d in daemons],
        cpu=cpu,
        window=window,
        finished=sum(1 for r in ran if r[1] != "running"),
    )


def per_worker_of(per_worker: Counter[str], pid: int) -> int:
    return sum(n for worker, n in per_worker.items() if worker.rpartition(":")[2] == str(pid))


def run_occurrence(
    admin: str, work: Path, side: Side, *, tag: str, count: int, replicas: int, opts: Options
) -> Outcome:
    """``count`` schedules due at one minute on ``replicas`` daemons of ``side``, fresh database."""
    base = work / f"{tag}-{side.name}"
    folder = base / "schedules.d"
    folder.mkdir(parents=True)
    (base / "data").mkdir()
    notes = Report()
    with fresh_database(admin, f"bench_due_{tag}_{side.name}") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.bench_due (id int, note text)")
            daemons: list[Daemon] = []
            try:
                for i in range(replicas):
                    daemons.append(
                        Daemon(base, url, folder, f"r{i}", side=side, log_level=opts.log_level)
                    )
                at = arm(conn, daemons, folder, count)
                print(f"  [{side.name}] occurrence {at:%H:%M:%S} UTC", flush=True)
                outcome = measure(conn, daemons, at, count, opts.cap)
            finally:
                for d in daemons:
                    d.stop()
                    if opts.log_dir is not None:
                        name = f"{tag}-{side.name}-{d.log_path.name}"
                        shutil.copy(d.log_path, opts.log_dir / name)
        report_logs(notes, [*daemons])
    describe(side, outcome)
    return outcome


def describe(side: Side, o: Outcome) -> None:
    late = sorted(o.late)
    spread = f"first {late[0]:.3f} s, last {late[-1]:.3f} s" if late else "no run started"
    shares = ", ".join(f"pid {pid}: {n}" for pid, n in o.shares)
    cpu = o.cpu / o.finished * 1000 if o.finished else float("nan")
    print(
        f"    [{side.name}] {len(o.late)} runs started ({spread}) of {o.count}; "
        f"missing {o.missing} (claimed, not started {o.unstarted}); duplicates {o.duplicates}\n"
        f"    [{side.name}] job statuses {dict(o.statuses)}; runs per replica {shares}\n"
        f"    [{side.name}] CPU {o.cpu:.2f} s over {o.window:.2f} s for {o.finished} finished "
        f"runs: {cpu:.2f} ms per run; wait ended {o.waited:.1f} s after the boundary",
        flush=True,
    )


# --- figures -----------------------------------------------------------------------------------


class Value(NamedTuple):
    """A figure; ``bound`` ">" or "<" when only a bound is known (runs still missing)."""

    x: float | None
    bound: str = ""

    def text(self, scale: float = 1, digits: int = 3) -> str:
        return "n/a" if self.x is None else f"{self.bound}{self.x * scale:.{digits}f}"


def ratio(a: Value, b: Value) -> Value:
    """``a / b``, with the bound that follows from the operands' bounds."""
    if a.x is None or b.x is None or b.x == 0 or (a.bound and b.bound):
        return Value(None)
    flip = {">": "<", "<": ">", "": ""}
    return Value(a.x / b.x, a.bound or flip[b.bound])


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    target: float | None
    op: str = "<"  # how "after" must compare with the target: "<", ">", ">=", "="
    scale: float = 1  # display = value * scale (seconds -> ms)
    digits: int = 3

    def verdict(self, v: Value) -> str:
        if self.target is None:
            return ""
        if v.x is None:
            return "FAIL"
        t = self.target / self.scale
        ok = {
            "<": v.x < t and v.bound != ">",
            ">": v.x > t and v.bound != "<",
            ">=": v.x >= t and v.bound != "<",
            "=": v.x == t and not v.bound,
        }[self.op]
        return "PASS" if ok else "FAIL"


def print_row(fig: Figure, before: Value, after: Value) -> None:
    target = "" if fig.target is None else f"{fig.op} {fig.target:g} {fig.unit}"
    of_target = (
        Value(None)
        if fig.target in (None, 0) or after.x is None
        else Value(after.x * fig.scale / fig.target, after.bound)
    )
    b, a = before.text(fig.scale, fig.digits), after.text(fig.scale, fig.digits)
    print(
        f"  {fig.label:44} {b:>10} {a:>10} "
        f"{fig.unit:2} {target:12} {of_target.text():>9} {fig.verdict(after):4} "
        f"{ratio(before, after).text():>9}",
        flush=True,
    )


def figures(o: Outcome, *, p99: float | None, cpu: bool) -> Rows:
    rows = [
        (Figure("lateness p50", "s", None), o.lateness(50)),
        (Figure("lateness p99", "s", p99), o.lateness(99)),
        (Figure("lateness max (boundary -> last start)", "s", None), o.lateness(100)),
        (Figure("missing jobs", "", 0, "=", digits=0), Value(o.missing)),
        (Figure("duplicate jobs", "", 0, "=", digits=0), Value(o.duplicates)),
    ]
    if cpu:
        per_run = Value(o.cpu / o.finished) if o.finished else Value(None)
        rows.append((Figure("client CPU per run", "ms", 5, scale=1000), per_run))
    if len(o.shares) > 1:
        total = sum(n for _, n in o.shares) or 1
        shares = [Value(100 * n / total) for _, n in o.shares]
        for i, share in enumerate(shares):
            rows.append((Figure(f"share of runs, replica {i + 1}", "%", None, digits=1), share))
        smallest = min(shares, key=lambda v: v.x or 0.0)
        rows.append((Figure("share of runs, smallest", "%", 20, ">=", digits=1), smallest))
    return rows


Rows = list[tuple[Figure, Value]]


def print_table(title: str, before: Rows | None, after: Rows | None) -> None:
    """One table of figures; a side not run reads n/a."""
    print(f"\n{title}")
    print(
        f"  {'figure':44} {'before':>10} {'after':>10} {'':2} {'target':12} "
        f"{'after/tgt':>9} {'':4} {'bef/after':>9}"
    )
    for i, (fig, _) in enumerate(after or before or []):
        b = before[i][1] if before else Value(None)
        a = after[i][1] if after else Value(None)
        print_row(fig, b, a)


# --- main --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    cap: float
    log_level: str
    log_dir: Path | None


class Scenario(NamedTuple):
    size: int
    quick: int  # the count with --quick
    replicas: int
    p99: float | None  # target, s
    cpu: bool  # CPU per run is a figure with a target

    def title(self, count: int) -> str:
        replicas = f"{self.replicas} replica{'s' if self.replicas > 1 else ''}"
        return f"{count:,} due in one minute, {replicas}"


SCENARIOS = {
    "1": Scenario(100, 20, 1, 0.5, True),
    "2": Scenario(1000, 100, 1, 5.0, True),
    "3": Scenario(300, 30, 3, 2.0, False),
    "4": Scenario(1000, 100, 3, None, False),  # its target: faster than scenario 2
}


def speedup(one: Outcome | None, three: Outcome | None) -> Rows:
    """Scenario 4: 1 replica / 3 replicas, of p99 lateness and of boundary -> last start."""
    if one is None or three is None:
        return []
    return [
        (Figure("p99, 1 replica / 3 replicas", "x", 1, ">"),
         ratio(one.lateness(99), three.lateness(99))),
        (Figure("last start, 1 replica / 3 replicas", "x", 1, ">"),
         ratio(one.lateness(100), three.lateness(100))),
    ]  # fmt: skip


def run(admin: str, work: Path, sides: list[Side], args: argparse.Namespace) -> None:
    opts = Options(args.cap or (30.0 if args.quick else 90.0), args.log_level, args.log_dir)
    results: dict[tuple[str, str], Outcome] = {}
    keys = args.scenarios.split(",")
    for key in keys:
        sc = SCENARIOS[key]
        count = sc.quick if args.quick else sc.size
        print(f"\n{key}. {sc.title(count)}", flush=True)
        for side in sides:
            results[key, side.name] = run_occurrence(
                admin, work, side, tag=f"s{key}", count=count, replicas=sc.replicas, opts=opts
            )
    print("\nResults (verdict and after/target of the working tree; the wait capped at "
          f"{opts.cap:g} s after the boundary)")  # fmt: skip
    for key in keys:
        sc = SCENARIOS[key]
        before, after = (
            figures(o, p99=sc.p99, cpu=sc.cpu) if (o := results.get((key, s))) else None
            for s in ("before", "after")
        )
        print_table(f"{key}. {sc.title(sc.quick if args.quick else sc.size)}", before, after)
        if key == "4":
            before, after = (
                speedup(results.get(("2", s)), results.get(("4", s))) or None
                for s in ("before", "after")
            )
            print_table("4. 3 replicas faster than 1 (scenario 2 / scenario 4)", before, after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--sides", default="before,after", help="before, after or both")
    parser.add_argument("--scenarios", default="1,2,3,4", help="comma-separated subset")
    parser.add_argument("--before-commit", default="4128c4c")
    parser.add_argument("--cap", type=float, help="seconds to wait after the boundary (90)")
    parser.add_argument("--log-level", default="warning", help="the daemons' RECONCILER_LOG_LEVEL")
    parser.add_argument("--log-dir", type=Path, help="keep the daemons' logs here")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    wanted = args.sides.split(",")
    if not set(wanted) <= {"before", "after"} or not set(args.scenarios.split(",")) <= {*SCENARIOS}:
        parser.error("--sides takes before,after; --scenarios takes 1,2,3,4")
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
    atexit.register(_stop_all)
    began = time.perf_counter()
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_due-") as tmp:
        work = Path(tmp)
        try:
            with (
                worktree(args.before_commit, work) as tree,
                database(args.database_url, work) as admin,
            ):
                head = git_head()
                sides = [
                    Side("before", tree, f"commit {args.before_commit}"),
                    Side("after", REPO, f"working tree at {head} (uncommitted changes included)"),
                ]
                sides = [s for s in sides if s.name in wanted]
                for side in sides:
                    print(f"{side.name}: {side.label}: reconciler from {check_import(side, work)}")
                try:
                    run(admin, work, sides, args)
                finally:
                    _stop_all()
        except KeyboardInterrupt:
            print("\ninterrupted; daemons stopped, worktree removed", file=sys.stderr)
            sys.exit(130)
    print(f"\n(whole run {time.perf_counter() - began:.0f} s; load average {os.getloadavg()})")


if __name__ == "__main__":
    main()
