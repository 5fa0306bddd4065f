"""Delivery end to end: files are imported once by what they hold, only when complete, in order,
and an empty delivery destroys nothing. Real processes, real files, real PostgreSQL.

The cases under ``tests/cases`` are files as vendors, editors and Git sidecars deliver them; the
other tests cover the rest of each kind (every mode a rule applies to).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Cli

CASES = Path(__file__).parent / "cases"


def _setup(cli: Cli, case: str, *, folder: str = "schedules.d") -> None:
    shutil.rmtree(cli.cwd / "schedules.d")
    shutil.copytree(CASES / case / folder, cli.cwd / "schedules.d")
    if (CASES / case / "data").is_dir():
        shutil.copytree(CASES / case / "data", cli.cwd / "data")
    made = cli("sql", "-f", str(CASES / case / "tables.sql"))
    assert made.returncode == 0, made.stderr
    applied = cli("apply")
    assert applied.returncode == 0, applied.stderr


def _run(cli: Cli, schedule: str, **env: str) -> dict[str, Any]:
    done = cli("run", schedule, "--output", "json", env=env or None)
    assert done.stdout, done.stderr
    assert "Traceback" not in done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _files(job: dict[str, Any]) -> list[tuple[str, str]]:
    return [(Path(f["path"]).name, f["status"]) for f in job["files"]]


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` look modified ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def _project(name: str, table: str, mode: str = "append", **delivery: Any) -> str:
    block = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in delivery.items())
    return (
        f"apiVersion: reconciler/v1\nkind: Project\nmetadata:\n  name: {name}\nspec:\n"
        f"  target:\n    table: public.{table}\n    mode: {mode}\n"
        + ("    key: [id]\n" if mode == "upsert" else "")
        + (f"  delivery:\n{block}" if block else "")
        + f"---\napiVersion: reconciler/v1\nkind: Schedule\nmetadata:\n  name: {name}\nspec:\n"
        f'  project: {name}\n  cron: "0 6 * * *"\n  local_files: ["../data/*.csv"]\n'
    )


def _folder(cli: Cli, document: str, table: str, key: str = "") -> Path:
    (cli.cwd / "schedules.d" / "p.yaml").write_text(document)
    (cli.cwd / "data").mkdir(exist_ok=True)
    made = cli("sql", "-c", f"CREATE TABLE IF NOT EXISTS {table} (id int {key}, note text)")
    assert made.returncode == 0, made.stderr
    applied = cli("apply")
    assert applied.returncode == 0, applied.stderr
    return cli.cwd / "data"


# -- the cases ------------------------------------------------------------------------------------


def test_a_partial_upload_waits_and_a_grown_file_is_never_loaded_again(
    cli: Cli, database_url: str
) -> None:
    """Case 21: a file still being written waits; once complete it loads whole, once. A file
    already imported that merely grew is refused with the sizes, never appended again."""
    _setup(cli, "partial-upload")
    data = cli.cwd / "data" / "orders_2026-12-03.csv"
    data.touch()  # being uploaded right now
    settle = {"RECONCILER_SETTLE_SECONDS": "10"}
    job = _run(cli, "orders", **settle)
    assert (job["status"], _files(job)) == ("succeeded", [(data.name, "waiting")])
    assert "not settled" in job["files"][0]["note"]
    with data.open("a") as out:
        out.write("g\n4,Dee Holt\n")
    _age(data, 60)
    job = _run(cli, "orders", **settle)
    assert (job["status"], job["rows_imported"]) == ("succeeded", 4)
    rows = _query(database_url, "SELECT order_id, customer FROM orders ORDER BY 1")
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert rows[2][1] == "Cy Downing"
    # The same file grows after its import (an upload resumed, a log appended to).
    with data.open("a") as out:
        out.write("5,Eve Park\n")
    _age(data, 60)
    job = _run(cli, "orders", **settle)
    assert job["status"] == "failed"
    assert "imported before with 66 bytes, now 77" in job["files"][0]["error"]
    assert _query(database_url, "SELECT count(*) FROM orders") == [(4,)]


def test_an_empty_delivery_never_empties_a_replaced_table(cli: Cli, database_url: str) -> None:
    """Case 22: a 0-byte file fails at line 1 and a header-only file is refused; the replace
    rolls back and the table keeps its rows, until delivery.allow_empty says it is meant."""
    _setup(cli, "empty-file-replace")
    later = CASES / "empty-file-replace" / "later"
    data = cli.cwd / "data"
    prices = "SELECT sku, price FROM prices ORDER BY 1"
    assert _run(cli, "prices")["status"] == "succeeded"
    kept = _query(database_url, prices)
    assert len(kept) == 3
    shutil.copy(later / "prices_2026-12-02.csv", data)
    job = _run(cli, "prices")
    assert job["status"] == "failed"
    (empty,) = [f for f in job["files"] if f["path"].endswith("12-02.csv")]
    assert (empty["status"], empty["line"]) == ("failed", 1)
    assert "empty file, a header was expected" in empty["error"]
    assert _query(database_url, prices) == kept
    (data / "prices_2026-12-02.csv").unlink()
    shutil.copy(later / "prices_2026-12-03.csv", data)
    job = _run(cli, "prices")
    assert job["status"] == "failed"
    assert "holds only its header: a replace would empty the table" in job["error"]
    assert _query(database_url, prices) == kept
    history = cli("history", "prices")
    assert "holds only its header" in history.stdout
    # Meant: the project says so, and the empty list replaces the table.
    yaml = cli.cwd / "schedules.d" / "prices.yaml"
    yaml.write_text(
        yaml.read_text().replace(
            "    header: true\n", "    header: true\n  delivery:\n    allow_empty: true\n"
        )
    )
    assert cli("apply").returncode == 0
    assert _run(cli, "prices")["status"] == "succeeded"
    assert _query(database_url, prices) == []


def test_a_project_removed_and_restored_keeps_its_ledger(cli: Cli, database_url: str) -> None:
    """Case 30: deleting a project's rows and declaring it again never makes its files new."""
    _setup(cli, "project-removed-and-restored")
    assert _run(cli, "sales")["rows_imported"] == 3
    sales = cli.cwd / "schedules.d" / "sales.yaml"
    text = sales.read_text()
    sales.unlink()
    removed = cli("apply")
    assert removed.returncode == 0, removed.stderr
    assert "- Project sales" in removed.stdout
    assert "its import record stays" in removed.stdout
    assert _query(database_url, "SELECT count(*) FROM cpi_projects WHERE name = 'sales'") == [(0,)]
    sales.write_text(text)
    assert cli("apply").returncode == 0
    job = _run(cli, "sales")
    assert (job["status"], job["rows_imported"]) == ("succeeded", 0)
    assert (_files(job), job["skipped_files"]) == ([], 2)  # skipped unread: counted
    assert _query(database_url, "SELECT count(*), count(DISTINCT sale_id) FROM sales") == [(3, 3)]
    # Loading again is a decision: `reconcile forget`, for some files or all of them.
    forgot = cli("forget", "sales", "--path", "*sales_2026-12-01.csv", "--output", "json")
    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout)["files"] == 1
    job = _run(cli, "sales")
    assert (_files(job), job["skipped_files"]) == ([("sales_2026-12-01.csv", "imported")], 1)
    assert _query(database_url, "SELECT count(*) FROM sales") == [(5,)]
    forgot = cli("forget", "sales")
    assert "sales: forgot 2 imported file(s)" in forgot.stdout


def test_the_same_bytes_under_a_new_mtime_or_revision_load_once(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    """Case 32: a Git sidecar's new revision (a fresh checkout behind a swapped symlink) and a
    touch change the mtime, not the bytes: the rates load once; later runs skip them unread."""
    repo = CASES / "new-mtime-same-bytes" / "repo"
    made = cli("sql", "-f", str(CASES / "new-mtime-same-bytes" / "tables.sql"))
    assert made.returncode == 0, made.stderr
    current = tmp_path / "current"
    shutil.copytree(repo, tmp_path / "rev1", copy_function=shutil.copy)  # new mtimes, as cp -r
    current.symlink_to("rev1")
    env = {"RECONCILER_SCHEDULES_DIR": str(current / "schedules.d")}
    assert cli("apply", env=env).returncode == 0
    assert _run(cli, "rates", **env)["rows_imported"] == 2
    time.sleep(1.1)
    shutil.copytree(repo, tmp_path / "rev2", copy_function=shutil.copy)
    (tmp_path / "current.tmp").symlink_to("rev2")
    os.replace(tmp_path / "current.tmp", current)
    assert cli("plan", env=env).stdout.strip() == "No changes."
    job = _run(cli, "rates", **env)
    assert (job["status"], _files(job)) == ("succeeded", [("rates_2026-12-01.csv", "unchanged")])
    assert _run(cli, "rates", **env)["skipped_files"] == 1  # now known: skipped unread
    (current / "data" / "rates_2026-12-01.csv").touch()
    assert _run(cli, "rates", **env)["files"][0]["status"] == "unchanged"
    rows = _query(database_url, "SELECT currency, rate FROM rates ORDER BY 1")
    assert [(c, str(r)) for c, r in rows] == [("EUR", "1.0000"), ("USD", "1.0842")]


# -- the kinds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["append", "upsert", "replace"])
def test_the_same_bytes_under_another_name_load_once(
    cli: Cli, database_url: str, mode: str
) -> None:
    """Identity is content: a copy or a rename of an imported file loads nothing, in every mode."""
    key = "UNIQUE" if mode == "upsert" else ""
    data = _folder(cli, _project("p", "t", mode), "t", key)
    (data / "a.csv").write_text("id,note\n1,one\n2,two\n")
    assert _run(cli, "p")["rows_imported"] == 2
    shutil.copy(data / "a.csv", data / "b.csv")
    (data / "a.csv").rename(data / "c.csv")
    job = _run(cli, "p")
    assert job["status"] == "succeeded", job
    assert sorted(_files(job)) == [("b.csv", "unchanged"), ("c.csv", "unchanged")]
    assert _query(database_url, "SELECT id, note FROM t ORDER BY 1") == [(1, "one"), (2, "two")]


def test_a_ready_marker_decides_and_is_not_data(cli: Cli, database_url: str) -> None:
    """With delivery.ready_marker a file waits for its marker, however old; markers that match
    the pattern are not imported themselves."""
    data = _folder(cli, _project("p", "t", ready_marker="{name}.ok"), "t")
    (data / "a.csv").write_text("id,note\n1,one\n")
    _age(data / "a.csv", 3600)
    job = _run(cli, "p")
    assert _files(job) == [("a.csv", "waiting")]
    assert "ready marker a.csv.ok" in job["files"][0]["note"]
    (data / "a.csv.ok").write_text("")
    (data / "b.csv").write_text("id,note\n2,two\n")  # just written, marked: settle does not apply
    (data / "b.csv.ok").write_text("")
    job = _run(cli, "p")
    assert sorted(_files(job)) == [("a.csv", "imported"), ("b.csv", "imported")]
    assert _query(database_url, "SELECT id FROM t ORDER BY 1") == [(1,), (2,)]


def test_files_commit_in_name_or_mtime_order_whatever_the_workers(
    cli: Cli, database_url: str
) -> None:
    """Upsert with several workers: a big early file and a small later one with the same key
    commit in order, so the newest file's value wins (name order, then mtime order)."""
    data = _folder(cli, _project("p", "t", "upsert"), "t", "UNIQUE")
    rows = "".join(f"{i},old {i}\n" for i in range(2, 200_000))
    (data / "prices_1.csv").write_text(f"id,note\n{rows}1,first\n")
    (data / "prices_2.csv").write_text("id,note\n1,second\n")
    job = _run(cli, "p", RECONCILER_IMPORT_WORKERS="2")
    assert job["status"] == "succeeded", job
    assert _query(database_url, "SELECT note FROM t WHERE id = 1") == [("second",)]
    # mtime order: the file written last wins, whatever its name.
    (cli.cwd / "schedules.d" / "p.yaml").write_text(_project("p", "t", "upsert", order="mtime"))
    assert cli("apply").returncode == 0
    (data / "z.csv").write_text(f"id,note\n{rows}1,older\n")
    _age(data / "z.csv", 120)
    (data / "a.csv").write_text("id,note\n1,newer\n")
    _age(data / "a.csv", 60)
    assert _run(cli, "p", RECONCILER_IMPORT_WORKERS="2")["status"] == "succeeded"
    assert _query(database_url, "SELECT note FROM t WHERE id = 1") == [("newer",)]


def test_an_append_of_two_files_with_a_clashing_unique_key_does_not_hang(
    cli: Cli, database_url: str
) -> None:
    """Appended files stage in parallel and commit in order: a later file that holds a key an
    earlier one needs yields to it; the earlier lands, the later fails on the duplicate."""
    data = _folder(cli, _project("p", "t"), "t", "UNIQUE")
    rows = "".join(f"{i},x\n" for i in range(2, 100_000))
    (data / "a.csv").write_text(f"id,note\n{rows}1,a\n")
    (data / "b.csv").write_text("id,note\n1,b\n")
    job = _run(cli, "p", RECONCILER_IMPORT_WORKERS="2")
    assert _files(job) == [("a.csv", "imported"), ("b.csv", "failed")]
    assert _query(database_url, "SELECT note FROM t WHERE id = 1") == [("a",)]


@pytest.mark.parametrize("mode", ["append", "upsert"])
def test_an_empty_file_is_refused_only_when_a_header_is_missing(
    cli: Cli, database_url: str, mode: str
) -> None:
    """Outside replace, a header-only file is a legitimate empty delivery (0 rows, recorded),
    while a 0-byte file with header: true fails at line 1."""
    key = "UNIQUE" if mode == "upsert" else ""
    data = _folder(cli, _project("p", "t", mode), "t", key)
    (data / "header_only.csv").write_text("id,note\n")
    (data / "zero.csv").write_text("")
    job = _run(cli, "p")
    assert _files(job) == [("header_only.csv", "imported"), ("zero.csv", "failed")]
    assert job["files"][1]["line"] == 1


def test_a_file_rewritten_while_it_is_read_fails_and_loads_whole_later(
    cli: Cli, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local file written to while COPY reads it (fstat of the open handle after the last
    read differs from the listing) rolls back; the next run loads the new version once."""
    from reconciler.imports.engine import importing
    from reconciler.imports.runs.running import run_schedule
    from reconciler.settings import load_settings

    data = _folder(cli, _project("p", "t"), "t")
    path = data / "big.csv"
    path.write_text("id,note\n" + "".join(f"{i},row {i}\n" for i in range(10_000)))
    writes = []

    class Racing(importing.Digesting):  # type: ignore[misc]
        """Appends to the file once, right after its first block was read: a writer racing."""

        def read(self, n: int = -1, /) -> bytes:
            block = super().read(n)
            if not writes:
                with path.open("a") as out:
                    writes.append(out.write("10000,late\n"))
            return block

    monkeypatch.setattr(importing, "Digesting", Racing)
    env = {**cli.env, "RECONCILER_SCHEDULES_DIR": str(cli.cwd / "schedules.d")}
    settings = load_settings(environ=env)
    first = run_schedule("p", settings=settings)
    assert first.status == "failed"
    (result,) = first.files
    assert result.error is not None
    assert "changed while it was read" in result.error
    assert _query(database_url, "SELECT count(*) FROM t") == [(0,)]
    monkeypatch.undo()
    second = run_schedule("p", settings=settings)
    assert (second.status, second.rows_imported) == ("succeeded", 10_001)


_OLD_LEDGER = """
CREATE TABLE cpi_projects (id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) UNIQUE NOT NULL, created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW());
CREATE TABLE cpi_jobs (id UUID PRIMARY KEY DEFAULT gen_random_uuid());
CREATE TABLE cpi_imported_files (
    id BIGSERIAL PRIMARY KEY,
    project_id UUID REFERENCES cpi_projects(id) ON DELETE CASCADE,
    source TEXT NOT NULL, path TEXT NOT NULL, size BIGINT NOT NULL,
    mtime TIMESTAMP WITH TIME ZONE NOT NULL,
    job_id UUID REFERENCES cpi_jobs(id) ON DELETE SET NULL,
    rows_imported BIGINT NOT NULL DEFAULT 0,
    imported_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    UNIQUE (project_id, source, path, size, mtime));
"""


def test_an_older_ledger_migrates_in_place(
    cli_env: dict[str, str], empty_database_url: str, tmp_path: Path
) -> None:
    """A ledger written before content identity (keyed by how a file was reached) keeps its
    records: the file it lists is still skipped unread, and the project's removal no longer
    takes the records with it."""
    cli = Cli({**cli_env, "RECONCILER_DATABASE_URL": empty_database_url}, tmp_path)
    (tmp_path / "schedules.d").mkdir()
    data = _folder_files(tmp_path, {"a.csv": "id,note\n1,one\n"})
    f = data / "a.csv"
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(_OLD_LEDGER)
        conn.execute("CREATE TABLE t (id int, note text)")
        (project_id,) = conn.execute(
            "INSERT INTO cpi_projects (name) VALUES ('p') RETURNING id"
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            "INSERT INTO cpi_imported_files (project_id, source, path, size, mtime) "
            "VALUES (%s, 'local', %s, %s, to_timestamp(%s))",
            (project_id, str(f), f.stat().st_size, f.stat().st_mtime_ns // 1000 / 1e6),
        )
    (tmp_path / "schedules.d" / "p.yaml").write_text(_project("p", "t"))
    applied = cli("apply", "--adopt")
    assert applied.returncode == 0, applied.stderr
    job = _run(cli, "p")
    assert (job["status"], _files(job), job["skipped_files"]) == ("succeeded", [], 1)
    assert _query(empty_database_url, "SELECT project FROM cpi_imported_files") == [("p",)]
    assert _query(empty_database_url, "SELECT count(*) FROM t") == [(0,)]
    (tmp_path / "schedules.d" / "p.yaml").unlink()
    assert cli("apply", "--allow-empty").returncode == 0
    assert _query(empty_database_url, "SELECT count(*) FROM cpi_projects") == [(0,)]
    assert _query(empty_database_url, "SELECT project FROM cpi_imported_files") == [("p",)]


def _folder_files(root: Path, files: dict[str, str]) -> Path:
    data = root / "data"
    data.mkdir(exist_ok=True)
    for name, text in files.items():
        (data / name).write_text(text)
    return data


def test_another_databases_older_ledger_migrates_in_place(database_url: str) -> None:
    """The ledger beside another target's data, in its older layout (keyed by project, source,
    path, size, mtime), is brought to the new one: its rows still answer the fast path, and
    bytes recorded anew are unique per project."""
    from datetime import UTC, datetime

    from reconciler.model.files import SourceFile
    from reconciler.store.ledger import Ledger

    with psycopg.connect(database_url) as conn:
        conn.execute(
            "CREATE TABLE reconcile_imported_files (project TEXT NOT NULL, source TEXT NOT NULL, "
            "path TEXT NOT NULL, size BIGINT NOT NULL, mtime TIMESTAMPTZ NOT NULL, job_id UUID, "
            "rows_imported BIGINT NOT NULL DEFAULT 0, imported_at TIMESTAMPTZ NOT NULL "
            "DEFAULT now(), PRIMARY KEY (project, source, path, size, mtime))"
        )
        at = datetime(2026, 12, 1, tzinfo=UTC)
        conn.execute(
            "INSERT INTO reconcile_imported_files (project, source, path, size, mtime) "
            "VALUES ('p', 'sftp://a@h:22', '/in/a.csv', 10, %s)",
            (at,),
        )
        conn.commit()
        ledger = Ledger("", "p", "sftp://b@h:22", "public", external=True)
        ledger.prepare(conn)
        old = SourceFile("/in/a.csv", "a.csv", 10, at)
        assert ledger.lookup(conn, [old]).seen == {("/in/a.csv", 10, at)}
        new = SourceFile("/in/b.csv", "b.csv", 5, at)
        with conn.transaction():
            assert ledger.record(conn, new, b"digest", 1, None)  # type: ignore[arg-type]
        renamed = SourceFile("/in/c.csv", "c.csv", 5, at)
        with conn.transaction():
            assert not ledger.record(conn, renamed, b"digest", 1, None)  # type: ignore[arg-type]
        ledger.prepare(conn)  # again: a no-op
