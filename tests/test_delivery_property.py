"""Any interleaving of deliveries leaves an append target with each distinct complete file's rows
exactly once: a property test of ``run_schedule`` in-process, real files, real PostgreSQL.

Hypothesis draws a few distinct small CSV files and a sequence of what senders do to a folder
(deliver a file, touch it, upload the same bytes again, copy it under another name, rename it,
append rows to it, write it in two parts) with runs of the schedule in between. ``_Model`` says
what each run must do with each listed file and so what the table must hold; after every run the
job's per-file statuses and the table's rows (as a multiset) must be exactly the model's.

Partial writes are modelled with the project's ``delivery.settle``: every completed write dates
the file an hour back (settled), while a file whose first part only is written keeps the current
time, so runs list it as ``waiting`` until its last part is written. ``settle`` is 600 s, far
longer than an example lasts on a loaded machine; nothing else depends on the clock.

The files are small (one block each), so the prefix digests that tell a grown file from the one
imported are checked on their own too, with a source that returns blocks of any size.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from import_rows import add_project, add_schedule

from reconciler.imports.engine.digesting import Digesting, digest_of
from reconciler.imports.runs.running import run_schedule
from reconciler.model.results import JobResult
from reconciler.settings import load_settings

SETTLE = 600
# What the engine does in two corners the model once followed it in, now right, kept as flags
# so the model states each rule where it applies:
# - a file that grew from bytes last seen (not imported) under its name, such as a copy or a
#   rename of an imported file that a run found unchanged, then appended to, is refused;
SIGHTED_GROWTH_REFUSED = True
# - a file that grew into bytes already imported from another name is unchanged, not refused.
LOADED_GROWTH_UNCHANGED = True
NAMES = ("a.csv", "b.csv", "c.csv", "d.csv")
HEADER = b"origin,n\n"

Key = tuple[str, int, int]  # the ledger's fast path: name, size, mtime (whole seconds)


def _rows(origin: int, count: int) -> bytes:
    return b"".join(b"%d,%d\n" % (origin, n) for n in range(count))


@dataclass
class _Model:
    """The folder as the senders left it, and what the project knows of it.

    A run takes the settled files in name order: one whose ``(name, size, mtime)`` a run has
    recorded is skipped unread; one whose bytes were loaded before (from any name) is
    ``unchanged`` and its key is remembered (one such sighting per name, the latest); one that
    extends, byte for byte, a version the project knows its name held (imported from it, or the
    latest sighting there: see ``SIGHTED_GROWTH_REFUSED``) grew and is refused; any other is
    imported. A file copied or renamed and then grown before any run saw it under its new name
    is, as far as anyone can tell, a new file: it is imported whole.
    """

    disk: dict[str, bytes] = field(default_factory=dict)  # name -> bytes on disk now
    mtime: dict[str, int] = field(default_factory=dict)
    writing: dict[str, bytes] = field(default_factory=dict)  # name -> whole file, part on disk
    loaded: list[bytes] = field(default_factory=list)  # contents imported, in order
    recorded: set[Key] = field(default_factory=set)  # keys of files imported
    sighted: dict[str, tuple[Key, bytes]] = field(default_factory=dict)
    versions: dict[str, list[bytes]] = field(default_factory=dict)  # imported from each name
    gaps: set[str] = field(default_factory=set)  # which of the engine's gaps were reached

    def run(self) -> dict[str, str]:
        """What a run does with each listed file; updates what the project knows."""
        seen = self.recorded | {key for key, _ in self.sighted.values()}
        statuses: dict[str, str] = {}
        sightings: dict[str, tuple[Key, bytes]] = {}
        for name in sorted(self.disk):
            data = self.disk[name]
            key = (name, len(data), self.mtime[name])
            if name in self.writing:
                statuses[name] = "waiting"
            elif key in seen:
                statuses[name] = "skipped"
            elif data in self.loaded and (LOADED_GROWTH_UNCHANGED or not self._grew(name, data)):
                statuses[name] = "unchanged"
                sightings[name] = (key, data)
            elif self._grew(name, data):
                statuses[name] = "failed"
            else:
                statuses[name] = "imported"
                self.loaded.append(data)
                self.recorded.add(key)
                self.versions.setdefault(name, []).append(data)
        self.sighted.update(sightings)  # recorded once the run's files are done
        return statuses

    def _grew(self, name: str, data: bytes) -> bool:
        """``data`` extends, byte for byte, bytes the project knows ``name`` held."""
        imported = _extends(data, self.versions.get(name, []))
        sighted = name in self.sighted and _extends(data, [self.sighted[name][1]])
        if imported and data in self.loaded:
            self.gaps.add("grew into bytes imported from another name")
        if sighted and not imported:
            self.gaps.add("grew from bytes sighted under its name")
        return imported or (sighted and SIGHTED_GROWTH_REFUSED)

    def table(self) -> Counter[tuple[int, int]]:
        """The target's rows: every imported content's rows, once per import."""
        rows: Counter[tuple[int, int]] = Counter()
        for data in self.loaded:
            for line in data.splitlines()[1:]:
                origin, n = line.split(b",")
                rows[(int(origin), int(n))] += 1
        return rows


def _extends(data: bytes, before: list[bytes]) -> bool:
    """``data`` extends one of ``before``, byte for byte."""
    return any(len(v) < len(data) and data.startswith(v) for v in before)


class _Folder:
    """The data folder and the model, changed together."""

    def __init__(self, path: Path, model: _Model) -> None:
        self.path = path
        self.model = model
        self._clock = int(time.time()) - 3600  # completed writes: settled, each a new mtime

    def _settle(self, name: str) -> None:
        self._clock += 1
        os.utime(self.path / name, ns=(self._clock * 10**9, self._clock * 10**9))
        self.model.mtime[name] = self._clock

    def complete(self) -> list[str]:
        return sorted(n for n in self.model.disk if n not in self.model.writing)

    def free(self) -> list[str]:
        """Names no sender is writing right now."""
        return [n for n in NAMES if n not in self.model.writing]

    def write(self, name: str, data: bytes) -> None:
        (self.path / name).write_bytes(data)
        self.model.disk[name] = data
        self._settle(name)

    def touch(self, name: str) -> None:
        self._settle(name)

    def upload_again(self, name: str) -> None:
        (self.path / name).unlink()
        self.write(name, self.model.disk[name])

    def copy(self, source: str, name: str) -> None:
        self.write(name, self.model.disk[source])

    def rename(self, source: str, name: str) -> None:
        os.rename(self.path / source, self.path / name)  # the mtime goes with the file
        self.model.disk[name] = self.model.disk.pop(source)
        self.model.mtime[name] = self.model.mtime.pop(source)

    def grow(self, name: str, rows: bytes) -> None:
        with (self.path / name).open("ab") as out:
            out.write(rows)
        self.model.disk[name] += rows
        self._settle(name)

    def begin(self, name: str, data: bytes, split: int) -> None:
        """The first ``split`` bytes of ``data`` written now: not settled."""
        (self.path / name).write_bytes(data[:split])
        self.model.disk[name] = data[:split]
        self.model.mtime[name] = int((self.path / name).stat().st_mtime)
        self.model.writing[name] = data

    def end(self, name: str) -> None:
        data = self.model.writing.pop(name)
        with (self.path / name).open("ab") as out:
            out.write(data[len(self.model.disk[name]) :])
        self.model.disk[name] = data
        self._settle(name)


# Each step is a sender's action, then maybe a run. Deliveries come first: they shrink to one.
_OPS = ("deliver", "grow", "touch", "upload_again", "copy", "rename", "begin", "end")
_steps = st.lists(
    st.tuples(st.sampled_from(_OPS), st.integers(0, 63), st.integers(0, 63), st.booleans()),
    min_size=1,
    max_size=12,
)
_files = st.lists(st.integers(1, 4), min_size=1, max_size=4)  # rows of each distinct file


class _Example:
    """One example: its own table, project, schedule and data folder."""

    def __init__(self, url: str, base: Path, workers: int) -> None:
        tag = uuid.uuid4().hex[:10]
        self.url = url
        self.table = f"deliveries_{tag}"
        self.schedule = f"deliveries-{tag}"
        data = base / "data" / tag
        data.mkdir(parents=True)
        with psycopg.connect(url) as conn:
            conn.execute(f"CREATE TABLE public.{self.table} (origin int, n int)")
        project = f"deliveries_{tag}"
        add_project(
            url,
            project,
            target={"table": f"public.{self.table}", "mode": "append"},
            delivery={"settle": SETTLE},
        )
        add_schedule(url, self.schedule, project=project, local_files=[f"../data/{tag}/*.csv"])
        self.settings = load_settings(
            schedules_dir=str(base / "schedules.d"),
            database_url=url,
            state_dir=str(base / "state"),
            import_workers=workers,
            environ={"RECONCILER_LOG_FORMAT": "json", "RECONCILER_SETTLE_SECONDS": "0"},
        )
        self.folder = _Folder(data, _Model())
        self.seen: set[str] = set()  # the file statuses runs gave, for Hypothesis's statistics

    def run(self) -> None:
        """Run the schedule; the job's files and the table must be what the model says."""
        expected = self.folder.model.run()
        result = run_schedule(self.schedule, settings=self.settings)
        got = {Path(f.path).name: f.status for f in result.files}
        assert got == expected, _explain(result)
        self.seen.update(expected.values())
        assert result.status == ("failed" if "failed" in expected.values() else "succeeded")
        assert self.rows() == self.folder.model.table()

    def rows(self) -> Counter[tuple[int, int]]:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(f"SELECT origin, n FROM {self.table}").fetchall()
        return Counter((int(r[0]), int(r[1])) for r in rows)

    def step(self, op: str, i: int, j: int, contents: list[bytes], grown: int) -> None:
        """Apply ``op``; ``i`` and ``j`` pick among what exists. A step with nothing to act on
        delivers a file instead, so that few examples end with an empty folder."""
        folder, complete, free = self.folder, self.folder.complete(), self.folder.free()
        writing = sorted(folder.model.writing)
        if op == "end" and writing:
            folder.end(writing[i % len(writing)])
        elif op == "begin" and free:
            data = contents[i % len(contents)]
            folder.begin(free[j % len(free)], data, 1 + (i * 7 + j) % (len(data) - 1))
        elif op == "touch" and complete:
            folder.touch(complete[i % len(complete)])
        elif op == "upload_again" and complete:
            folder.upload_again(complete[i % len(complete)])
        elif op == "grow" and complete:
            folder.grow(complete[i % len(complete)], _rows(100 + grown, 1 + j % 2))
        elif op in ("copy", "rename") and complete:
            source = complete[i % len(complete)]
            others = [n for n in free if n != source]
            if others:
                getattr(folder, op)(source, others[j % len(others)])
        elif free:
            folder.write(free[j % len(free)], contents[i % len(contents)])


def _explain(result: JobResult) -> str:
    return "; ".join(
        f"{Path(f.path).name}: {f.status} {f.error or f.note or ''}" for f in result.files
    )


@settings(
    max_examples=40,
    deadline=None,
    # Each example makes its own table, project, schedule and folder: the function-scoped
    # database and tmp_path are shared safely.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(files=_files, steps=_steps, workers=st.sampled_from([1, 2]))
def test_every_interleaving_loads_each_complete_file_once(
    database_url: str,
    tmp_path: Path,
    files: list[int],
    steps: list[tuple[str, int, int, bool]],
    workers: int,
) -> None:
    """Deliveries, copies, renames, touches, growth and partial writes between runs: each run
    does what the model says with each file, and the table holds each imported content's rows
    once; once every write is complete, two more runs leave it so."""
    note(f"files={files!r} steps={steps!r} workers={workers}")  # shown when an example fails
    (tmp_path / "schedules.d").mkdir(exist_ok=True)
    example = _Example(database_url, tmp_path, workers)
    contents = [HEADER + _rows(origin, count) for origin, count in enumerate(files)]
    for grown, (op, i, j, run) in enumerate(steps):
        example.step(op, i, j, contents, grown)
        if run:
            example.run()
    for name in sorted(example.folder.model.writing):
        example.folder.end(name)
    example.run()
    example.run()
    for status in sorted(example.seen):
        event(f"a file {status}")
    for gap in sorted(example.folder.model.gaps):
        event(f"a file {gap}")


def test_a_copy_that_grows_is_refused(database_url: str, tmp_path: Path) -> None:
    """An imported file copied under another name (a run finds it unchanged) and then appended
    to has merely grown: refused, its first rows not appended twice."""
    (tmp_path / "schedules.d").mkdir()
    example = _Example(database_url, tmp_path, workers=1)
    folder = example.folder
    folder.write("a.csv", HEADER + _rows(0, 2))
    example.run()
    folder.copy("a.csv", "b.csv")
    example.run()  # b.csv: unchanged, sighted
    folder.grow("b.csv", _rows(100, 1))
    result = run_schedule(example.schedule, settings=example.settings)
    statuses = [(Path(f.path).name, f.status) for f in result.files]
    assert statuses == [("a.csv", "skipped"), ("b.csv", "failed")], _explain(result)
    assert example.rows() == Counter({(0, 0): 1, (0, 1): 1})


def test_grown_bytes_imported_elsewhere_are_unchanged(database_url: str, tmp_path: Path) -> None:
    """A file that grew into bytes already imported under another name is unchanged: the same
    bytes are never loaded twice, and nothing about it needs refusing."""
    (tmp_path / "schedules.d").mkdir()
    example = _Example(database_url, tmp_path, workers=1)
    folder = example.folder
    folder.write("a.csv", HEADER + _rows(0, 2))
    example.run()
    folder.grow("a.csv", _rows(100, 1))
    folder.copy("a.csv", "b.csv")
    example.run()  # a.csv refused (it grew), b.csv imported (bytes new to the project)
    result = run_schedule(example.schedule, settings=example.settings)
    statuses = [(Path(f.path).name, f.status) for f in result.files]
    assert statuses == [("a.csv", "unchanged"), ("b.csv", "skipped")], _explain(result)
    assert result.status == "succeeded"


class _Chunks:
    """A reader that returns at most the next of ``sizes`` bytes per read (as sources do)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data, self._sizes, self._at = data, sizes, 0

    def read(self, n: int = -1, /) -> bytes:
        size = self._sizes.pop(0) if self._sizes else len(self._data)
        size = size if n < 0 else min(size, n)
        block = self._data[self._at : self._at + size]
        self._at += len(block)
        return block


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=600),
    checkpoints=st.lists(st.integers(-2, 700), max_size=6),
    sizes=st.lists(st.integers(1, 200), max_size=12),
)
def test_digesting_keeps_the_digest_of_each_prefix_asked_for(
    data: bytes, checkpoints: list[int], sizes: list[int]
) -> None:
    """Whatever the blocks a source returns, the digest of the whole is that of the bytes, and
    each positive checkpoint within them has the digest of that many first bytes (how a file
    that grew is told from the one read)."""
    reader = Digesting(_Chunks(data, sizes), checkpoints)
    read = b""
    while block := reader.read(256):
        read += block
    assert read == data
    assert reader.read_bytes == len(data)
    assert reader.digest() == digest_of(data)
    wanted = {c for c in checkpoints if 0 < c <= len(data)}
    assert reader.prefixes == {c: digest_of(data[:c]) for c in wanted}
