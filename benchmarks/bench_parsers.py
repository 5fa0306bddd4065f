"""Benchmark: how each parser of outside input scales, at 1x, 2x and 4x a hostile input.

Run by hand: ``python benchmarks/bench_parsers.py [--scale 4] [--only csv,yaml]``. The cases
are those of ``tests/test_linear.py`` (durations, YAML values, cron, time zones, callback URLs,
CSV framing, header matching, known_hosts, whole YAML documents), each timed best of three at
its base size n, 2n and 4n. A linear parser doubles its time with its input; the line ends in
PASS when 4x the input takes at most 3 x 4 = 12 times as long (quadratic would take 16 times,
and the base sizes are large enough that it takes far longer), FAIL otherwise.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_linear import CASES, FLOOR, Case  # the cases live with the test

__all__ = ["main"]

_REPEATS = 3
_MARGIN = 3  # the time ratio allowed per size ratio


def _seconds(case: Case, value: object) -> float:
    best = float("inf")
    for _ in range(_REPEATS):
        start = time.perf_counter()
        case.run(value)
        best = min(best, time.perf_counter() - start)
    return best


def measure(case: Case, scale: int) -> list[float]:
    """The best time of ``case`` at n, 2n, ... up to ``scale`` times n."""
    case.run(case.make(case.n))  # first-use costs are not the parser's
    times = []
    factor = 1
    while factor <= scale:
        value = case.make(case.n * factor)
        gc.collect()
        gc.disable()
        try:
            times.append(_seconds(case, value))
        finally:
            gc.enable()
        factor *= 2
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=4, help="the largest input, times n")
    parser.add_argument("--only", default="", help="comma-separated name prefixes, e.g. csv,yaml")
    args = parser.parse_args(argv)
    prefixes = tuple(p.strip() for p in args.only.split(",") if p.strip())
    failed = 0
    sizes = []
    factor = 1
    while factor <= args.scale:
        sizes.append(f"{factor}x")
        factor *= 2
    print(f"{'parser':<40} {'n':>8} " + " ".join(f"{s:>10}" for s in sizes) + "   ratios")
    for case in CASES:
        if prefixes and not case.name.startswith(prefixes):
            continue
        times = measure(case, args.scale)
        ratios = [later / max(earlier, FLOOR) for earlier, later in itertools.pairwise(times)]
        whole = times[-1] / max(times[0], FLOOR)
        verdict = "PASS" if whole <= _MARGIN * args.scale else "FAIL"
        failed += verdict == "FAIL"
        shown = " ".join(f"{t * 1000:8.2f}ms" for t in times)
        steps = " ".join(f"{r:4.1f}" for r in ratios)
        print(f"{case.name:<40} {case.n:>8} {shown}   {steps}  {verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
