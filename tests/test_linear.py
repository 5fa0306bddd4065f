"""Every parser of outside input costs time linear in its size, whatever the input.

Each case times one parser on a hostile input of size n and of size 8n, in this process, the
best of a few runs, and asserts that the larger took at most ``BOUND`` times as long: a linear
parser takes about 8 times as long, a quadratic one 64 times. The smaller time is floored at a
millisecond, so that a parser which bounds its input (and takes microseconds either way) is not
judged on timer noise. ``benchmarks/bench_parsers.py`` prints the same cases at 1x, 2x and 4x.
"""

from __future__ import annotations

import gc
import io
import itertools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from reconciler.errors import DataError
from reconciler.imports.engine.copying import TargetTable, match_header
from reconciler.imports.engine.framing import Framed
from reconciler.imports.sources.known_hosts import host_matches, parse_known_hosts
from reconciler.logs import redact
from reconciler.model import timing
from reconciler.model.loading import load_files
from reconciler.model.rendering import _masked
from reconciler.model.scalars import resolve
from reconciler.model.specs import CsvDialect, document_adapter, parse_duration

SCALE = 8  # the larger input is this many times the smaller
BOUND = 24  # 3 x SCALE: linear passes on a busy machine, quadratic (64) fails
FLOOR = 1e-3  # seconds: below this, the smaller time is noise
REPEATS = 3


class Case(NamedTuple):
    name: str
    make: Callable[[int], Any]  # the hostile input of size n
    run: Callable[[Any], object]
    n: int


def _quietly(parse: Callable[[Any], object]) -> Callable[[Any], object]:
    """``parse``, its refusals (what hostile input should get) taken as results."""

    def run(value: Any) -> object:
        try:
            return parse(value)
        except (ValueError, DataError):
            return None

    return run


def _framed(dialect: CsvDialect, block_size: int = 64 * 1024) -> Callable[[bytes], object]:
    def run(data: bytes) -> object:
        framed = Framed(io.BytesIO(data), dialect, block_size=block_size)
        if dialect.header:
            return framed.header()
        return sum(len(block) for block in framed.blocks())

    return run


def _header(columns: tuple[str, ...], *, takes: tuple[str, ...] | None = None) -> object:
    table = takes if takes is not None else columns
    return match_header(list(columns), TargetTable("t", table, "append", insertable=table))


def _document(value: str) -> object:
    spec = {"project": "p", "cron": "@daily", "misfire_grace": value, "timezone": value}
    document = {
        "apiVersion": "reconciler/v1",
        "kind": "Schedule",
        "metadata": {"name": "s"},
        "spec": spec,
    }
    return document_adapter().validate_python(document)


def _schedules(n: int) -> bytes:
    """A folder's worth of schedules naming undeclared projects, and as many projects."""
    documents = [
        f"---\napiVersion: reconciler/v1\nkind: Schedule\nmetadata: {{name: s{i}}}\n"
        f"spec: {{project: q{i}, cron: '@daily'}}\n---\napiVersion: reconciler/v1\n"
        f"kind: Project\nmetadata: {{name: p{i}}}\nspec: {{target: {{table: t}}}}\n"
        for i in range(n)
    ]
    return "".join(documents).encode()


_CALLS = itertools.count()


def _loaded(data: bytes) -> object:
    # A comment of its own each call: the loader remembers files by content.
    return load_files([("hostile.yaml", data + f"# {next(_CALLS)}\n".encode())])


def _url(url: str) -> object:
    spec = {"project": "p", "cron": "@daily", "callback_url": url}
    document = {
        "apiVersion": "reconciler/v1",
        "kind": "Schedule",
        "metadata": {"name": "s"},
        "spec": spec,
    }
    return document_adapter().validate_python(document)


def _stars(pattern: str) -> object:
    return [host_matches([pattern], "a" * 200) for _ in range(20)]


def _scalar(text: str) -> object:
    return resolve(text, None, None, "key")


def _unknown_header(columns: tuple[str, ...]) -> object:
    return _header(columns, takes=("x",))


_cron = _quietly(timing.normalize_cron)  # past the cached length: not remembered
_csv = _framed(CsvDialect(header=False))

CASES = [
    # durations: misfire_grace, interval, delivery.settle
    Case(
        "duration: digits then a bad unit", lambda n: "1" * n + "x", _quietly(parse_duration), 4000
    ),
    Case("duration: many parts", lambda n: "1h" * n, _quietly(parse_duration), 4000),
    Case("duration: spaces", lambda n: " " * n + "1", _quietly(parse_duration), 4000),
    # YAML scalar values, as the parser resolves them
    Case("scalar: digits and underscores", lambda n: "1_" * n, _scalar, 20000),
    Case("scalar: base 60", lambda n: "1" + ":5" * n + "_", _scalar, 20000),
    Case("scalar: float", lambda n: "1" * n + "e" + "1" * n + "a", _scalar, 20000),
    # cron and time zones, through the whole document's validation
    Case("cron: a long list", lambda n: "1," * n + "1 * * * *", _cron, 4000),
    Case("cron: a long bad field", lambda n: "1" * n + "L * * * *", _cron, 20000),
    Case("cron: blanks", lambda n: "1" + " \t" * n + "x", _cron, 20000),
    Case(
        "time zone and duration in a document", lambda n: "Europe/" * n, _quietly(_document), 20000
    ),
    # callback URLs (checked, not changed here)
    Case("callback_url: long host", lambda n: "http://" + "a." * n + "b/", _quietly(_url), 20000),
    Case("callback_url: brackets", lambda n: "http://[" + ":" * n, _quietly(_url), 20000),
    Case("callback_url: at signs", lambda n: "http://" + "a@" * n + "b", _quietly(_url), 20000),
    # CSV framing
    Case("csv: a run of empty lines", lambda n: b"a\n" + b"\n" * n + b"b\n", _csv, 1 << 19),
    Case("csv: mixed empty lines", lambda n: b"a\n" + b"\r\n\n" * n + b"b\n", _csv, 1 << 18),
    Case("csv: empty lines at the end", lambda n: b"a\r\n" * 40 + b"\r\n" * n, _csv, 1 << 19),
    Case("csv: a long quoted value", lambda n: b'"' + b"x\n" * n + b'"\n', _csv, 1 << 18),
    Case("csv: lines of \\.", lambda n: b"\\.\n" * n, _csv, 1 << 15),
    Case(
        "csv: a quoted header of lines",
        lambda n: b'"' + b"x\n" * n + b'"\n',
        _quietly(_framed(CsvDialect(), 4096)),
        1 << 14,
    ),
    # header matching
    Case(
        "header: many columns", lambda n: tuple(f"c{i}" for i in range(n)), _quietly(_header), 5000
    ),
    Case("header: one name many times", lambda n: ("c",) * n, _quietly(_header), 5000),
    Case(
        "header: many unknown names",
        lambda n: tuple(f"c{i}" for i in range(n)),
        _quietly(_unknown_header),
        5000,
    ),
    # known_hosts
    Case(
        "known_hosts: many lines", lambda n: "a,b ssh-ed25519 AAAA\n" * n, parse_known_hosts, 4000
    ),
    Case(
        "known_hosts: a long line", lambda n: "a" * n + " ssh-rsa AAAA\n", parse_known_hosts, 50000
    ),
    Case("known_hosts: many stars", lambda n: "*a" * n + "b", _stars, 60),
    # secrets masked in log lines and plans: free text with URL-like runs
    Case("log redaction: a scheme-like run", lambda n: "a." * n, redact, 20000),
    Case("log redaction: many user infos", lambda n: "a://b:" * n, redact, 5000),
    Case("plan masking: a scheme-like run", lambda n: "a." * n, _masked, 20000),
    Case("plan masking: many schemes", lambda n: "a://" * n, _masked, 5000),
    # the YAML loader, whole documents
    Case("yaml: undeclared projects", _schedules, _loaded, 150),
    Case(
        "yaml: many keys",
        lambda n: "".join(f"k{i}: [1, on]\n" for i in range(n)).encode(),
        _loaded,
        1500,
    ),
    Case(
        "yaml: a long value", lambda n: b"spec: {interval: '" + b"1" * n + b"x'}\n", _loaded, 50000
    ),
]


def _seconds(run: Callable[[Any], object], *values: Any) -> list[float]:
    """The best time of each of ``values`` over ``REPEATS`` rounds, taken in turn, so that a
    busy spell of the machine slows both sizes alike rather than only one."""
    best = [float("inf")] * len(values)
    for _ in range(REPEATS):
        for i, value in enumerate(values):
            start = time.perf_counter()
            run(value)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_time_grows_linearly_with_the_input(case: Case) -> None:
    """8 times the input takes at most 24 times as long (quadratic would take 64 times)."""
    small, large = case.make(case.n), case.make(SCALE * case.n)
    case.run(small)  # first-use costs (imports, compiled patterns) are not the parser's
    gc.collect()
    gc.disable()
    try:
        smaller, larger = _seconds(case.run, small, large)
        smaller = max(smaller, FLOOR)
    finally:
        gc.enable()
    assert larger / smaller <= BOUND, f"{larger:.4f} s against {smaller:.4f} s"
