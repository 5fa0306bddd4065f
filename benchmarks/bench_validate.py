"""Benchmark: ``reconcile validate`` end to end on a large generated folder, and start-up times.

Run by hand (not part of the test suite): ``python benchmarks/bench_validate.py``. It writes
10,000 Schedule documents over 1,000 files (plus their Projects) into a temporary folder, runs
``python -m reconciler validate`` on it as a subprocess a few times and prints the figures. The
target is under 3 s end to end on a 2-core machine; ``--help`` and ``validate`` of a small folder
should start in under 0.3 s.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "write_folder"]

_PROJECT = """\
apiVersion: reconciler/v1
kind: Project
metadata:
  name: project-{p}
spec:
  target:
    table: public.table_{p}
    columns: [id, created_at, amount]
    mode: append
  csv:
    header: true
  sftp:
    host: sftp.example.com
    username: importer
    password: ${{SFTP_PASSWORD}}
    remote_dir: /outgoing/{p}
    pattern: "data_*.csv"
"""

_SCHEDULE = """\
apiVersion: reconciler/v1
kind: Schedule
metadata:
  name: schedule-{s}
spec:
  project: project-{p}
  {timing}
  timezone: {tz}
  enabled: {enabled}
  callback_url: https://webhook.example.com/notify/{s}
  sftp_override: {{remote_dir: /outgoing/{p}/{s}, pattern: "part_{s}_*.csv"}}
  misfire_grace: 300s
"""
_ZONES = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo")


def write_folder(root: Path, *, files: int = 1000, per_file: int = 10, projects: int = 100) -> int:
    """Write the generated documents under ``root``; return how many documents were written."""
    (root / "projects.yaml").write_text(
        "---\n".join(_PROJECT.format(p=p) for p in range(projects)), encoding="utf-8"
    )
    count = projects
    for f in range(files):
        folder = root / f"team-{f % 20:02d}"
        folder.mkdir(exist_ok=True)
        docs = []
        for i in range(per_file):
            s = f * per_file + i
            timing = f'cron: "{s % 60} {s % 24} * * *"' if s % 2 else f"interval: {1 + s % 6}h"
            docs.append(
                _SCHEDULE.format(
                    s=s,
                    p=s % projects,
                    timing=timing,
                    tz=_ZONES[s % len(_ZONES)],
                    enabled="true" if s % 7 else "false",
                )
            )
        (folder / f"schedules-{f:04d}.yaml").write_text("---\n".join(docs), encoding="utf-8")
        count += per_file
    return count


def _time(argv: list[str], runs: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (user + system) seconds of each run of ``argv``."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return walls, cpus


def _report(label: str, measured: tuple[list[float], list[float]]) -> None:
    # CPU time is reported beside wall-clock time: on a shared machine it is the steadier figure.
    walls, cpus = measured
    print(
        f"{label:<40} wall best {min(walls):5.3f} s, median {statistics.median(walls):5.3f} s;"
        f"  cpu best {min(cpus):5.3f} s  ({len(walls)} runs)"
    )


def main() -> None:
    """Generate the folders, time the commands, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--per-file", type=int, default=10)
    args = parser.parse_args()
    python = [sys.executable, "-m", "reconciler"]
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        big.mkdir()
        small.mkdir()
        documents = write_folder(big, files=args.files, per_file=args.per_file)
        write_folder(small, files=2, per_file=2, projects=2)
        size = sum(p.stat().st_size for p in big.rglob("*.yaml"))
        print(f"{documents} documents in {args.files + 1} files, {size / 1e6:.1f} MB")
        _report("python -c pass (interpreter start-up)", _time([sys.executable, "-c", "pass"], 5))
        _report("reconcile --help", _time([*python, "--help"], args.runs))
        _report("reconcile validate (small folder)", _time([*python, "validate", str(small)], 5))
        _report(
            f"reconcile validate ({documents} documents)",
            _time([*python, "validate", str(big)], args.runs),
        )


if __name__ == "__main__":
    main()
