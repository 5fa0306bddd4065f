"""Rerun every benchmark and print one table of their figures against their targets.

Each script measures both sides in one run (the engine against ``psql \\copy``, the SFTP source
against OpenSSH's ``sftp get``, the daemon against its targets) and prints its figures with
``(target ...)`` or ``PASS``/``FAIL``; this runner runs them one after the other, keeps their
full output in a folder, and gathers those lines into one Markdown table, ready for the README.

    python benchmarks/run_all.py [--only import,serve] [--out benchmark-results]

A full run takes tens of minutes on two cores (the SFTP import moves a gigabyte).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name: (script, arguments); the order runs the quick ones first.
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "parsers": ("bench_parsers.py", []),
    "validate": ("bench_validate.py", []),
    "reconcile": ("bench_reconcile.py", []),
    "import": ("bench_import.py", []),
    "run": ("bench_run.py", []),
    "sftp": ("bench_sftp.py", []),
    "sftp-import": ("bench_sftp_import.py", []),
    "serve": ("bench_serve.py", []),
    "api": ("bench_api.py", []),
    "due": ("bench_due.py", []),
}
_FIGURE = re.compile(r"\(target [^)]*\)|\bPASS\b|\bFAIL\b")


def figures(output: str) -> list[str]:
    """The lines of a benchmark's output that state a figure against its target; every line
    of a benchmark that sets no target (it compares against a reference, as validate does)."""
    lines = [" ".join(line.split()) for line in output.splitlines() if line.strip()]
    return [line for line in lines if _FIGURE.search(line)] or lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated names: " + ", ".join(BENCHMARKS))
    parser.add_argument("--out", default="benchmark-results", help="folder for full outputs")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    failed: list[str] = []
    for name in names:
        script, extra = BENCHMARKS[name]
        command = [sys.executable, str(HERE / script), *extra]
        print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        (out / f"{name}.txt").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
        seconds = time.perf_counter() - began
        print(f"   {name} took {seconds:.0f} s, exit {done.returncode}", file=sys.stderr)
        if done.returncode != 0:
            failed.append(name)
        rows += [(name, line) for line in figures(done.stdout)] or [(name, "(no output)")]
    print("| benchmark | figure against its target |")
    print("|---|---|")
    for name, line in rows:
        print(f"| {name} | {line.replace('|', '/')} |")
    if failed:
        print(f"\nfailed to run: {', '.join(failed)} (full output in {out}/)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
