"""Benchmark: a whole ``reconcile run`` process, fork to exit, against ``psql \\copy``.

Two figures, each measured on both sides in this one run:

1. ``reconcile run`` of a tiny file (one record), the whole process: median < 0.35 s. Each
   repetition writes a new file (new bytes, so the run really loads one record); the run reads
   its schedule, records its job, lists, checks the table, copies and commits, and exits.
   ``psql \\copy`` of the same file is printed beside it for scale (not a target).
2. ``reconcile run`` of 1,000,000 rows (8 columns, ~105 bytes a row, ``bench_import``'s file)
   against ``psql -c "\\copy t FROM 'f.csv' CSV HEADER"`` of the same file, each into an
   identical table created fresh before each run: psql time / reconcile time >= 1.0x. The two
   alternate (which goes first flips each repetition) and the medians are compared. The job's
   own span (``cpi_jobs``, from its row to its end) is printed too: the rest of reconcile's
   time is the process starting, connecting and exiting.

    python benchmarks/bench_run.py [--rows 1000000] [--repeat 5] [--tiny-repeat 15]
                                   [--database-url URL] [--no-bytecode] [--only tiny|rows]

Without --database-url an embedded server is started in a temporary folder. Every run is a
child process (the ``reconcile`` console script of this Python, with the log at its default,
info, as JSON on stderr, which is not a terminal), timed from before the fork to after its exit;
its CPU seconds (user + system) are what the children's usage grew by while it ran. Before each
1 M-row run the table is dropped and created again, the run's import records are removed, and a
CHECKPOINT flushes the previous run's dirty pages (else each run pays for its predecessor's
writes). On two cores any other busy process shows in both figures: measure on a quiet
machine, and read the CPU seconds, which swing less than the times.

Bytecode: an installed package has its modules compiled (pip writes ``.pyc`` files); a checkout
run with ``PYTHONDONTWRITEBYTECODE=1`` compiles every module of the package from source at every
start, some 40 ms here. So the children run with bytecode kept in a cache folder of the
benchmark's own (``PYTHONPYCACHEPREFIX``, warmed by one run first), as installed;
``--no-bytecode`` measures the other way.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import psycopg
from bench_import import generate, psql_binary
from embedded import database

TINY, BIG, PSQL_TABLE = "bench_run_tiny", "bench_run_big", "bench_run_psql"
COLUMN_NAMES = "id,created_at,customer,quantity,price,paid,region,note"
COLUMNS = (
    "(id bigint, created_at timestamptz, customer text, quantity integer, "
    "price numeric(12,2), paid boolean, region text, note text)"
)
TINY_TARGET = 0.35  # seconds, whole process
RATIO_TARGET = 1.0  # psql time / reconcile time

SCHEDULES = """\
apiVersion: reconciler/v1
kind: Project
metadata: {{name: {tiny}}}
spec:
  target: {{table: public.{tiny}}}
---
apiVersion: reconciler/v1
kind: Schedule
metadata: {{name: {tiny}}}
spec:
  project: {tiny}
  cron: "0 0 1 1 *"
  local_files: ["../data/tiny/*.csv"]
---
apiVersion: reconciler/v1
kind: Project
metadata: {{name: {big}}}
spec:
  target: {{table: public.{big}}}
---
apiVersion: reconciler/v1
kind: Schedule
metadata: {{name: {big}}}
spec:
  project: {big}
  cron: "0 0 1 1 *"
  local_files: ["../data/big/*.csv"]
"""


class Child(NamedTuple):
    """One child process: wall seconds fork to exit, its CPU seconds, what it printed."""

    wall: float
    cpu: float
    out: str


def child(argv: list[str], env: dict[str, str]) -> Child:
    """Run ``argv`` to its end; ``SystemExit`` unless it exits 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = process.communicate()
    wall = time.perf_counter() - start
    # Reaped by communicate(): the children's totals grew by this child's usage alone.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if process.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({process.returncode}): {err[-2000:]}")
    return Child(wall, cpu, out)


def reconcile_argv() -> list[str]:
    """The console script next to this Python (what a user runs), else ``-m reconciler``."""
    script = Path(sys.executable).with_name("reconcile")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reconciler"]


def environment(url: str, work: Path, *, bytecode: bool) -> dict[str, str]:
    env = {
        **os.environ,
        "RECONCILER_DATABASE_URL": url,
        "RECONCILER_SCHEDULES_DIR": str(work / "schedules.d"),
        "RECONCILER_LOCAL_ROOTS": str(work),
        "RECONCILER_SETTLE_SECONDS": "0",
        "RECONCILER_LOG_FORMAT": "json",
        # Its own owner: on a database given with --database-url, apply leaves others' rows be.
        "RECONCILER_OWNER": "bench-run",
    }
    for name in ("RECONCILER_LOG_LEVEL", "COLUMNS"):
        env.pop(name, None)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def fresh(url: str, table: str, schedule: str | None = None) -> None:
    """Create ``table`` anew, forget what ``schedule`` (and its project, of the same name)
    imported, flush dirty pages."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} {COLUMNS}")
        # Autovacuum would analyse the table after one run while the next one loads.
        conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        if schedule is not None:
            conn.execute("DELETE FROM cpi_imported_files WHERE project = %s", (schedule,))
            conn.execute("DELETE FROM cpi_jobs WHERE schedule_name = %s", (schedule,))
        conn.execute("CHECKPOINT")


def rows_in(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def job_span(url: str, name: str) -> float:
    """Seconds between the latest job's row and its end, as recorded."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM finished_at - started_at) FROM cpi_jobs "
            "WHERE schedule_name = %s AND status = 'succeeded' ORDER BY started_at DESC LIMIT 1",
            (name,),
        ).fetchone()
    return float(row[0]) if row else float("nan")


def tiny_figure(url: str, work: Path, env: dict[str, str], repeat: int) -> dict[str, list[float]]:
    folder = work / "data" / "tiny"
    reconcile, psql = reconcile_argv(), psql_binary()
    runs: dict[str, list[float]] = {"reconcile": [], "reconcile cpu": [], "psql": []}
    fresh(url, TINY, TINY)
    fresh(url, PSQL_TABLE)
    for i in range(-1, repeat):  # -1: the warm-up, which fills the bytecode cache
        for old in folder.glob("*.csv"):
            old.unlink()
        path = folder / f"tiny-{i + 1}.csv"
        path.write_text(f"{COLUMN_NAMES}\n{i + 1},2026-11-01 00:00:00+00,c,1,1.00,true,n,x {i}\n")
        ran = child([*reconcile, "run", TINY], env)
        copied = child(
            [psql, url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
             f"\\copy {PSQL_TABLE} FROM '{path}' WITH (FORMAT csv, HEADER true)"], env,
        )  # fmt: skip
        if i >= 0:
            runs["reconcile"].append(ran.wall)
            runs["reconcile cpu"].append(ran.cpu)
            runs["psql"].append(copied.wall)
    loaded = rows_in(url, TINY)
    if loaded != repeat + 1:
        raise SystemExit(f"the tiny runs loaded {loaded} rows, not {repeat + 1}")
    return runs


def big_figure(
    url: str, work: Path, env: dict[str, str], rows: int, repeat: int
) -> dict[str, list[float]]:
    folder = work / "data" / "big"
    data = folder / "rows.csv"
    print(f"generating {rows:,} rows ...", file=sys.stderr)
    generate(data, rows)
    reconcile, psql = reconcile_argv(), psql_binary()
    copy = f"\\copy {PSQL_TABLE} FROM '{data}' CSV HEADER"
    runs: dict[str, list[float]] = {
        "psql": [], "reconcile": [], "psql cpu": [], "reconcile cpu": [], "job": []
    }  # fmt: skip
    # -1: a warm-up pair, not counted: a server just started loads its first file far slower.
    for i in range(-1, repeat):
        for who in ("psql", "reconcile") if i % 2 == 0 else ("reconcile", "psql"):
            spans: list[float] = []
            if who == "psql":
                fresh(url, PSQL_TABLE)
                ran = child([psql, url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", copy], env)
                table = PSQL_TABLE
            else:
                fresh(url, BIG, BIG)
                ran = child([*reconcile, "run", BIG], env)
                spans.append(job_span(url, BIG))
                table = BIG
            if (loaded := rows_in(url, table)) != rows:
                raise SystemExit(f"{who} loaded {loaded:,} rows, not {rows:,}")
            if i >= 0:
                runs[who].append(ran.wall)
                runs[f"{who} cpu"].append(ran.cpu)
                runs["job"] += spans
    return runs


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report_tiny(runs: dict[str, list[float]]) -> None:
    median = statistics.median
    seconds = median(runs["reconcile"])
    print(
        f"reconcile run, tiny file      {seconds:>7.3f} s  median of {len(runs['reconcile'])} "
        f"(CPU {median(runs['reconcile cpu']):.3f} s; psql \\copy of it "
        f"{median(runs['psql']):.3f} s)  (target < {TINY_TARGET} s) "
        f"{verdict(seconds < TINY_TARGET)}"
    )


def report_rows(runs: dict[str, list[float]], rows: int) -> None:
    median = statistics.median
    psql, ours = median(runs["psql"]), median(runs["reconcile"])
    print(
        f"reconcile run, {rows:,} rows {ours:>7.3f} s  median of {len(runs['reconcile'])} "
        f"(CPU {median(runs['reconcile cpu']):.2f} s; the job itself {median(runs['job']):.3f} s)"
    )
    print(
        f"psql \\copy,   {rows:,} rows {psql:>7.3f} s  median of {len(runs['psql'])} "
        f"(CPU {median(runs['psql cpu']):.2f} s)"
    )
    print(
        f"psql / reconcile              {psql / ours:>7.2f}x  (target >= {RATIO_TARGET:.1f}x) "
        f"{verdict(psql / ours >= RATIO_TARGET)}"
    )


def runs_line(label: str, runs: dict[str, list[float]]) -> None:
    shown = {k: [round(s, 3) for s in v] for k, v in runs.items()}
    print(f"  {label} runs (s): {shown}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="1 M-row runs of each side")
    parser.add_argument("--tiny-repeat", type=int, default=15)
    parser.add_argument("--database-url")
    parser.add_argument("--no-bytecode", action="store_true", help="compile at every start")
    parser.add_argument("--only", choices=("tiny", "rows"), help="measure one figure only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database(args.database_url, Path(tmp)) as url:
        work = Path(tmp)
        for folder in ("schedules.d", "data/tiny", "data/big"):
            (work / folder).mkdir(parents=True)
        (work / "schedules.d" / "bench.yaml").write_text(SCHEDULES.format(tiny=TINY, big=BIG))
        env = environment(url, work, bytecode=not args.no_bytecode)
        try:
            fresh(url, TINY)
            fresh(url, BIG)
            child([*reconcile_argv(), "apply"], env)
            tiny: dict[str, list[float]] | None = None
            big: dict[str, list[float]] | None = None
            if args.only != "rows":
                tiny = tiny_figure(url, work, env, args.tiny_repeat)
            if args.only != "tiny":
                big = big_figure(url, work, env, args.rows, args.repeat)
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                for table in (TINY, BIG, PSQL_TABLE):
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
            shutil.rmtree(work / "data", ignore_errors=True)
    how = "bytecode cached, as installed" if not args.no_bytecode else "compiled at each start"
    print(f"\nwhole processes, fork to exit ({how})")
    if tiny is not None:
        report_tiny(tiny)
    if big is not None:
        report_rows(big, args.rows)
    for label, runs in (("tiny", tiny), (f"{args.rows:,} rows", big)):
        if runs is not None:
            runs_line(label, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
