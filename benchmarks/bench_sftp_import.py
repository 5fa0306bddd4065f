"""Benchmark: the streamed SFTP -> COPY import against "``sftp get`` to disk, then ``psql \\copy``".

Target: the engine's SFTP import at least as fast as OpenSSH's ``sftp get`` followed by
``psql \\copy`` of the downloaded file, on loopback, with a client peak RSS under 100 MB for a
1 GB file. Run by hand (not part of the test suite):

    python benchmarks/bench_sftp_import.py [--rows 9000000] [--repeat 2] [--database-url URL]

Without --database-url an embedded server is started in a temporary folder. One CSV of
``bench_import``'s 8-column shape (9,000,000 rows ~ 1 GB) is generated once and served by
OpenSSH's sshd on a loopback port (``tests/sftp_servers.py``, key auth). Each round runs both
sides, alternating which goes first, into the same emptied table (TRUNCATE, then CHECKPOINT so
that no run pays for the last one's dirty pages):

  two-step   ``sftp -b`` get to a file in the temporary folder, then ``psql -c "\\copy ..."`` of
             it, one after the other; the file is deleted afterwards
  streamed   ``run_schedule`` of a schedule whose project reads the file over SFTP, in a child
             process; its ledger rows are deleted between rounds so the file loads every time

Times are medians; the client peak RSS is each process's VmHWM (sftp's and ssh's added up), the
CPU seconds are the clients' own (user + system). The streamed time is measured inside the child
around ``run_schedule`` (SSH connection, job row, COPY, commit), the two-step's around its
processes; the streamed child's whole wall time, interpreter start-up included, is shown too.
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
from typing import Any, NamedTuple

import psycopg

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent / "tests")]

from bench_import import DDL as _DDL  # noqa: E402
from bench_import import TABLE as _IMPORT_TABLE  # noqa: E402
from bench_import import _hwm, generate, psql_binary  # noqa: E402
from embedded import database  # noqa: E402

__all__ = ["main"]

TABLE = "bench_sftp_import"
NAME = "bench-sftp-import"
_BOUND = 100e6  # bytes: the client's memory bound for a 1 GB file


class _Run(NamedTuple):
    seconds: float
    peak: int  # bytes, the processes' VmHWM added up
    cpu: float  # user + system seconds of the client processes


def _tree_hwm(pid: int) -> dict[int, int]:
    """VmHWM of ``pid`` and its direct children (sftp runs ssh as its child)."""
    peaks = {pid: _hwm(pid)}
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        peaks[int(child)] = _hwm(child)
    return peaks


def _run(argv: list[str], env: dict[str, str] | None = None) -> tuple[_Run, str]:
    """Run a child to the end: its wall time, peak RSS, CPU (its reaped children's too), stdout."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(child.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    peaks: dict[int, int] = {}
    while True:
        for pid, peak in _tree_hwm(child.pid).items():
            peaks[pid] = max(peaks.get(pid, 0), peak)
        done, status, usage = os.wait4(child.pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    if child.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed with exit {child.returncode}")
    return _Run(wall, sum(peaks.values()), usage.ru_utime + usage.ru_stime), out[0]


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    assert row is not None
    return int(row[0])


def _reset(url: str) -> None:
    """Empty the table and this project's ledger, then flush dirty pages."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLE}")
        conn.execute(
            "DELETE FROM cpi_imported_files WHERE project_id = "
            "(SELECT id FROM cpi_projects WHERE name = %s)",
            (NAME,),
        )
        conn.execute("DELETE FROM cpi_jobs WHERE schedule_name = %s", (NAME,))
        conn.execute("CHECKPOINT")


def _setup(url: str, sftp: dict[str, Any]) -> None:
    """The table, and a project + schedule that read the served file over SFTP."""
    from import_rows import add_project, add_schedule

    from reconciler.store.migrating import migrate

    with psycopg.connect(url) as conn:
        migrate(conn)
        conn.commit()
        conn.execute(_DDL.replace(_IMPORT_TABLE, TABLE))
        # Autovacuum analysing the last run's table during the next run is noise on two cores.
        conn.execute(f"ALTER TABLE {TABLE} SET (autovacuum_enabled = false)")
        conn.execute("DELETE FROM cpi_jobs WHERE schedule_name = %s", (NAME,))
        conn.execute("DELETE FROM cpi_schedules WHERE name = %s", (NAME,))
        conn.execute("DELETE FROM cpi_projects WHERE name = %s", (NAME,))
    add_project(url, NAME, target={"table": TABLE}, sftp=sftp)
    add_schedule(url, NAME, project=NAME, source_file="bench.yaml")


def _two_step(url: str, sftp_argv: list[str], got: Path) -> tuple[_Run, _Run]:
    """``sftp get`` to ``got``, then ``psql \\copy`` from it; the download is deleted after."""
    fetched, _ = _run(sftp_argv)
    copy = f"\\copy {TABLE} FROM '{got}' WITH (FORMAT csv, HEADER true)"
    try:
        copied, _ = _run([psql_binary(), url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", copy])
    finally:
        got.unlink()
    return fetched, copied


def _streamed(url: str) -> tuple[_Run, float, int]:
    """One engine run in a child: the run, the child's whole wall time, the rows it reported."""
    env = {**os.environ, "RECONCILER_LOG_LEVEL": "warning", "RECONCILER_LOG_FORMAT": "json"}
    process, out = _run([sys.executable, __file__, "--child", url], env)
    result = json.loads(out)
    if result["status"] != "succeeded":
        raise SystemExit(f"engine run failed: {result['error']}")
    run = _Run(result["seconds"], max(process.peak, result["peak_rss"]), process.cpu)
    return run, process.seconds, result["rows"]


def _child(url: str) -> None:
    """The measured process: one manual ``run_schedule`` of the SFTP schedule."""
    from reconciler import logs

    # Before the engine's modules are imported: they bind their loggers at import time.
    logs.configure(log_format="json", level="warning")
    from reconciler.imports.runs.running import run_schedule
    from reconciler.settings import load_settings

    settings = load_settings(database_url=url, environ={"RECONCILER_SETTLE_SECONDS": "0"})
    start = time.perf_counter()
    result = run_schedule(NAME, settings=settings)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "status": result.status, "error": result.error,
                      "rows": result.rows_imported, "peak_rss": _hwm("self")}))  # fmt: skip


def _bench(url: str, rows: int, repeat: int, work: Path) -> None:
    from sftp_servers import start_openssh

    data = work / "data"
    data.mkdir()
    csv = data / "bench.csv"
    print(f"generating {rows:,} rows ...", file=sys.stderr)
    generate(csv, rows)
    size = csv.stat().st_size
    load = os.getloadavg()
    with start_openssh(work / "sshd") as server:
        _setup(url, server.sftp_fields(data, pattern=csv.name))
        got = work / "downloaded.csv"
        batch = work / "get.batch"
        batch.write_text(f'get "{csv}" "{got}"\n')
        sftp_argv = [
            "sftp", "-q", "-b", str(batch), "-P", str(server.port), "-i", str(server.client_key),
            "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "BatchMode=yes",
            f"{server.username}@127.0.0.1",
        ]  # fmt: skip
        runs: dict[str, list[_Run]] = {"get": [], "copy": [], "streamed": []}
        walls: list[float] = []
        for i in range(repeat):  # alternate who goes first: load and warm-up hit both alike
            for side in ("two-step", "streamed") if i % 2 == 0 else ("streamed", "two-step"):
                _reset(url)
                if side == "two-step":
                    fetched, copied = _two_step(url, sftp_argv, got)
                    runs["get"].append(fetched)
                    runs["copy"].append(copied)
                else:
                    run, wall, reported = _streamed(url)
                    assert reported == rows, f"the engine reported {reported:,} rows"
                    runs["streamed"].append(run)
                    walls.append(wall)
                loaded = _count(url)
                assert loaded == rows, f"{side}: {loaded:,} rows in the table, not {rows:,}"
                print(f"round {i + 1}: {side} done", file=sys.stderr)
    _report(size, rows, runs, walls, (load, os.getloadavg()))


def _report(
    size: int,
    rows: int,
    runs: dict[str, list[_Run]],
    walls: list[float],
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    def line(label: str, seconds: float, peak: int, cpu: float) -> str:
        return (
            f"{label:<30}{seconds:>8.2f} s{size / seconds / 1e6:>9.1f} MB/s"
            f"{peak / 1e6:>10.1f} MB{cpu:>9.2f} s"
        )

    med = {k: statistics.median(r.seconds for r in v) for k, v in runs.items()}
    peak = {k: max(r.peak for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r.cpu for r in v) for k, v in runs.items()}
    pairs = list(zip(runs["get"], runs["copy"], strict=True))
    two_step = statistics.median(a.seconds + b.seconds for a, b in pairs)
    streamed, wall = med["streamed"], statistics.median(walls)
    print(f"\n{rows:,} rows, {size / 1e6:.0f} MB, medians of {len(walls)} rounds, "
          f"{os.cpu_count()} CPUs, load average {loads[0][0]:.2f} before, "
          f"{loads[1][0]:.2f} after")  # fmt: skip
    print(f"{'':<30}{'time':>10}{'throughput':>14}{'peak RSS':>13}{'CPU':>11}")
    print(line("sftp get (sftp + ssh)", med["get"], peak["get"], cpu["get"]))
    print(line("psql \\copy", med["copy"], peak["copy"], cpu["copy"]))
    print(line("two-step, one after the other", two_step, max(peak["get"], peak["copy"]),
               statistics.median(a.cpu + b.cpu for a, b in pairs)))  # fmt: skip
    print(line("streamed (run_schedule)", streamed, peak["streamed"], cpu["streamed"]))
    print(f"{'  its process, start-up incl.':<30}{wall:>8.2f} s{size / wall / 1e6:>9.1f} MB/s")
    print()
    print(f"two-step / streamed time    {two_step / streamed:>6.2f}x   (target >= 1.0x)")
    print(f"  with start-up             {two_step / wall:>6.2f}x")
    print(f"streamed client peak RSS    {peak['streamed'] / 1e6:>6.1f} MB  "
          f"(target < {_BOUND / 1e6:.0f} MB for 1 GB: "
          f"{'met' if peak['streamed'] < _BOUND else 'NOT met'})")  # fmt: skip
    rounded = {k: [round(r.seconds, 2) for r in v] for k, v in runs.items()}
    print(f"  runs (s): {json.dumps(rounded)}")


def main() -> None:
    """Parse the flags, start what is missing, measure, print."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=9_000_000, help="default ~1 GB")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; medians are shown")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    if not shutil.which("sftp") or not Path("/usr/sbin/sshd").exists():
        raise SystemExit("needs OpenSSH (sftp and sshd): run .ci/install-system-deps")
    with (
        tempfile.TemporaryDirectory(prefix="bench-sftp-import-") as tmp,
        database(args.database_url, Path(tmp)) as url,
    ):
        try:
            _bench(url, args.rows, args.repeat, Path(tmp))
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


if __name__ == "__main__":
    main()
