"""Real-world CSV files that once loaded wrong, run end to end: apply, create the tables, run.

Each case folder under ``tests/cases`` holds the user's ``schedules.d`` and ``data`` and the
target tables; its README states the right result, which the table below checks.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Cli

CASES = Path(__file__).parent / "cases"


def _setup(cli: Cli, case: str) -> None:
    shutil.rmtree(cli.cwd / "schedules.d")
    shutil.copytree(CASES / case / "schedules.d", cli.cwd / "schedules.d")
    shutil.copytree(CASES / case / "data", cli.cwd / "data")
    made = cli("sql", "-f", str(CASES / case / "tables.sql"))
    assert made.returncode == 0, made.stderr
    applied = cli("apply")
    assert applied.returncode == 0, applied.stderr


def _run(cli: Cli, schedule: str) -> dict[str, Any]:
    done = cli("run", schedule, "--output", "json")
    assert done.stdout, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    assert "Traceback" not in done.stderr
    return document


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_a_line_that_is_backslash_dot_is_data(cli: Cli, database_url: str) -> None:
    r"""A record that is exactly \. is a value, never the end of the data: all 4 rows land."""
    _setup(cli, "backslash-dot-line")
    job = _run(cli, "case01-patterns")
    assert (job["status"], job["rows_imported"]) == ("succeeded", 4)
    rows = _query(database_url, "SELECT pattern FROM case01_patterns ORDER BY ctid")
    assert rows == [("[0-9]+",), ("\\.",), ("^abc$",), ("\\d{4}",)]


def test_header_columns_are_matched_by_name(cli: Cli, database_url: str) -> None:
    """A header in another order than the table loads each value into the column it names."""
    _setup(cli, "header-column-order")
    job = _run(cli, "case02-customers")
    assert (job["status"], job["rows_imported"]) == ("succeeded", 2)
    rows = _query(
        database_url,
        "SELECT customer_id, first_name, last_name FROM case02_customers ORDER BY 1",
    )
    assert rows == [(101, "Ada", "Quill"), (102, "Ben", "Marsh")]


def test_a_byte_order_mark_is_never_data(cli: Cli, database_url: str) -> None:
    """A leading UTF-8 byte-order mark is dropped, with and without a header."""
    _setup(cli, "utf8-bom-csv")
    for schedule in ("case03-stock-noheader", "case03-stock-header"):
        job = _run(cli, schedule)
        assert (job["status"], job["rows_imported"]) == ("succeeded", 2), job
    rows = _query(database_url, "SELECT sku, length(sku), qty FROM case03_stock ORDER BY 1")
    assert rows == [("A-100", 5, 5), ("A-200", 5, 7), ("B-100", 5, 1), ("B-200", 5, 2)]


def test_an_unterminated_quote_names_the_line_it_began_on(cli: Cli, database_url: str) -> None:
    """The error names line 4, where the stray quote opened, never a line past the file's end."""
    _setup(cli, "unterminated-quote-line")
    job = _run(cli, "case08-tickets")
    assert job["status"] == "failed"
    (failed,) = job["files"]
    assert failed["line"] == 4
    assert "line 4" in failed["error"]
    assert "unterminated" in failed["error"]
    assert _query(database_url, "SELECT count(*) FROM case08_tickets") == [(0,)]


def test_blank_lines_at_the_end_are_not_records(cli: Cli, database_url: str) -> None:
    """Trailing empty CRLF lines add no NULL rows and fail no file."""
    _setup(cli, "trailing-blank-lines")
    for schedule in ("case10-codes", "case10-readings"):
        job = _run(cli, schedule)
        assert (job["status"], job["rows_imported"]) == ("succeeded", 2), job
    assert _query(database_url, "SELECT code FROM case10_codes ORDER BY 1") == [
        ("AX1",),
        ("BQ7",),
    ]
    readings = _query(database_url, "SELECT meter_id, kwh::text FROM case10_readings ORDER BY 1")
    assert readings == [(7, "12.5"), (8, "3.25")]


def test_upsert_rows_with_a_null_key_are_all_inserted(cli: Cli, database_url: str) -> None:
    """NULL keys never conflict (as INSERT ... ON CONFLICT); rows_imported is what landed."""
    _setup(cli, "upsert-null-key")
    job = _run(cli, "case12-contacts")
    assert job["status"] == "succeeded"
    rows = _query(database_url, "SELECT email, full_name, phone FROM case12_contacts ORDER BY 2")
    assert rows == [
        (None, "Ana Diaz", "555-0103"),
        ("kim@example.test", "Kim Rowe", "555-0199"),
        (None, "Lee Park", "555-0102"),
    ]
    assert job["rows_imported"] == len(rows)


def test_upsert_null_key_into_a_not_null_key_fails_naming_the_line(
    cli: Cli, database_url: str
) -> None:
    """When the key column refuses NULL, the file fails naming the first keyless line."""
    _setup(cli, "upsert-null-key")
    cli("sql", "-c", "DELETE FROM case12_contacts WHERE false")
    altered = cli("sql", "-c", "ALTER TABLE case12_contacts ALTER email SET NOT NULL")
    assert altered.returncode == 0, altered.stderr
    job = _run(cli, "case12-contacts")
    assert job["status"] == "failed"
    (failed,) = job["files"]
    assert failed["line"] == 3
    assert "email" in failed["error"]
    assert _query(database_url, "SELECT count(*) FROM case12_contacts") == [(0,)]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("customer_id,surname,first_name,email", "unknown: surname"),
        ("customer_id,first_name,email", "missing: last_name"),
        ("customer_id,first_name,first_name,last_name,email", "named twice: first_name"),
    ],
)
def test_a_header_that_does_not_fit_fails_showing_both_lists(
    cli: Cli, database_url: str, header: str, message: str
) -> None:
    """Unknown, missing and repeated header names fail the file with both column lists."""
    _setup(cli, "header-column-order")
    for old in (cli.cwd / "data").iterdir():
        old.unlink()
    (cli.cwd / "data" / "customers_1.csv").write_text(f"{header}\n101,Ada,Quill,a@x\n")
    job = _run(cli, "case02-customers")
    assert job["status"] == "failed"
    (failed,) = job["files"]
    assert message in failed["error"]
    assert f"the header has {header.replace(',', ', ')}" in failed["error"]
    assert "target.columns takes customer_id, first_name, last_name, email" in failed["error"]
    assert failed["line"] == 1


@pytest.mark.parametrize("mode", ["append", "replace", "upsert"])
def test_rows_imported_is_what_landed(cli: Cli, database_url: str, mode: str) -> None:
    """In every mode a job's rows_imported equals the rows its run wrote to the table."""
    key = "\n    key: [email]" if mode == "upsert" else ""
    (cli.cwd / "schedules.d" / "contacts.yaml").write_text(
        f"""apiVersion: reconciler/v1
kind: Project
metadata:
  name: contacts
spec:
  target:
    table: public.contacts
    mode: {mode}{key}
---
apiVersion: reconciler/v1
kind: Schedule
metadata:
  name: contacts
spec:
  project: contacts
  interval: 1h
  local_files: ["../data/*.csv"]
"""
    )
    (cli.cwd / "data").mkdir()
    (cli.cwd / "data" / "a.csv").write_text(
        "email,full_name\nkim@x,Kim\n,Lee\n,Ana\nkim@x,Kim R\nbo@x,Bo\nold@x,Old 2\n\n"
    )
    unique = " UNIQUE" if mode == "upsert" else ""
    created = cli("sql", "-c", f"CREATE TABLE contacts (email text{unique}, full_name text)")
    assert created.returncode == 0, created.stderr
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO contacts VALUES ('old@x', 'Old'), ('keep@x', 'Keep')")
        seeded = conn.execute("SELECT txid_current()::text").fetchone()
    assert seeded is not None
    assert cli("apply").returncode == 0
    job = _run(cli, "contacts")
    assert job["status"] == "succeeded"
    landed = _query(
        database_url, f"SELECT count(*) FROM contacts WHERE xmin::text <> '{seeded[0]}'"
    )
    assert job["rows_imported"] == landed[0][0] == {"append": 6, "replace": 6, "upsert": 5}[mode]


def _big_twins(cli: Cli) -> None:
    """The case's big files: its small ones with the 1,000-character value made 200,000 long."""
    for kind in ("docs", "keyed"):
        small = (cli.cwd / "data" / f"{kind}_small.csv").read_text()
        big = small.replace("x" * 1000, "x" * 200_000).replace("y" * 1000, "y" * 200_000)
        (cli.cwd / "data" / f"{kind}_big.csv").write_text(big)


def _history(cli: Cli, schedule: str) -> list[dict[str, Any]]:
    done = cli("history", schedule, "--output", "json")
    assert done.returncode == 0, done.stderr
    jobs: list[dict[str, Any]] = json.loads(done.stdout)["jobs"]
    return jobs


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("docs", "unterminated CSV quoted field"),
        ("keyed-docs", "the upsert key (doc_id) is empty (NULL)"),
    ],
)
def test_a_long_value_never_moves_the_reported_line(
    cli: Cli, database_url: str, schedule: str, message: str
) -> None:
    """A valid 200,000-character value on line 3 leaves the error on line 5, as a short one."""
    _setup(cli, "field-over-128k")
    _big_twins(cli)
    job = _run(cli, schedule)
    assert job["status"] == "failed"
    assert [(f["status"], f["line"]) for f in job["files"]] == [("failed", 5), ("failed", 5)]
    for failed in job["files"]:
        assert failed["error"].startswith(message), failed
        assert "line 5" in failed["error"] or message.startswith("the upsert"), failed
    (stored,) = _history(cli, schedule)
    assert stored["status"] == "failed"
    assert " line 5: " in stored["error"]
    assert [f["line"] for f in stored["files"]] == [5, 5]


@pytest.mark.parametrize(
    ("schedule", "line", "message"),
    [
        ("members-data-nul", 3, "invalid byte sequence"),
        (
            "members-header-nul",
            1,
            "the header does not match the target (unknown: na\\x00me)",
        ),
        ("members-utf16-no-bom", 1, "looks like UTF-16LE without a byte-order mark"),
    ],
)
def test_a_nul_byte_fails_the_file_and_the_job_is_recorded(
    cli: Cli, database_url: str, schedule: str, line: int, message: str
) -> None:
    """A NUL in a value or a header, or UTF-16 without a mark, fails the job: never left running.

    ``run --output json`` shows the reason as it is (JSON holds a NUL); the job row, escaped.
    """
    _setup(cli, "nul-byte")
    for _ in range(2):
        job = _run(cli, schedule)
        assert job["status"] == "failed", job
        (failed,) = job["files"]
        assert failed["line"] == line
        assert message.replace("\\x00", "\x00") in failed["error"]
    history = _history(cli, schedule)
    assert [j["status"] for j in history] == ["failed", "failed"]
    assert all(f" line {line}: " in j["error"] and message in j["error"] for j in history)
    shown = cli("history", schedule)
    assert shown.returncode == 0, shown.stderr
    assert [row.split()[3] for row in shown.stdout.splitlines()[1:]] == ["failed", "failed"]


_MEMBERS_ANY = """apiVersion: reconciler/v1
kind: Schedule
metadata:
  name: members-any
spec:
  project: members
  cron: "0 6 * * *"
  local_files: ["../data/any/*.csv"]
"""


def _members_file(cli: Cli, name: bytes, data: bytes) -> None:
    """The ``nul-byte`` case with one more schedule, ``members-any``, over the file ``name``."""
    _setup(cli, "nul-byte")
    (cli.cwd / "schedules.d" / "any.yaml").write_text(_MEMBERS_ANY)
    applied = cli("apply")
    assert applied.returncode == 0, applied.stderr
    folder = cli.cwd / "data" / "any"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        f.write(data)


@pytest.mark.parametrize(
    ("name", "data", "line", "stored"),
    [
        (b"v.csv", b"member_id,name\n1,Ada\n2,B\x00e\n", 3, "invalid byte sequence"),
        (b"h.csv", b"member_id,na\x00me\n1,Ada\n", 1, "(unknown: na\\x00me)"),
        (b"u.csv", b"member_id,na\xffme\n1,Ada\n", 1, "(unknown: na\\xffme)"),
        pytest.param(
            b"bad\xff.csv",
            b"member_id,name\n1,Ada\nx,Bo\n",
            3,
            "/bad\\xff.csv line 3: ",
        ),
        pytest.param(
            b"both\xfe.csv",
            b"member_id,\x00\n",
            1,
            "/both\\xfe.csv line 1: ",
        ),
        (
            b"le.csv",
            "member_id,name\n1,Ada\n".encode("utf-16-le"),
            1,
            "looks like UTF-16LE without a byte-order mark",
        ),
        (
            b"be.csv",
            "member_id,name\n1,Ada\n".encode("utf-16-be"),
            1,
            "looks like UTF-16BE without a byte-order mark",
        ),
        (
            b"bom.csv",
            "\ufeffmember_id,name\n1,Ada\n".encode("utf-16-le"),
            1,
            "the file is UTF-16LE (it starts with that byte-order mark)",
        ),
    ],
)
def test_what_a_job_row_cannot_hold_is_stored_escaped(
    cli: Cli, database_url: str, *, name: bytes, data: bytes, line: int, stored: str
) -> None:
    """NUL and bytes that are not UTF-8, in a value, a header or a file name, fail the file with
    its line; the job row holds them escaped, and a second run records the same failed job."""
    _members_file(cli, name, data)
    for _ in range(2):
        job = _run(cli, "members-any")
        assert job["status"] == "failed", job
        (failed,) = job["files"]
        assert failed["line"] == line, failed
    history = _history(cli, "members-any")
    assert [j["status"] for j in history] == ["failed", "failed"]
    for job in history:
        (failed,) = job["files"]
        assert stored in job["error"], job["error"]
        assert f" line {line}: " in job["error"]
        assert failed["path"].endswith(name.decode("utf-8", "backslashreplace")), failed
    shown = cli("history", "members-any")
    assert shown.returncode == 0, shown.stderr
    assert [row.split()[3] for row in shown.stdout.splitlines()[1:]] == ["failed", "failed"]


_FAILING = {
    "docs": ('4,"never closed{eol}5,"after"{eol}6,"after"{eol}', "unterminated CSV quoted field"),
    "keyed-docs": (",no key{eol}6,c{eol}", "the upsert key (doc_id) is empty (NULL)"),
    "docs-server": ("x,bad{eol}6,c{eol}", 'invalid input syntax for type integer: "x"'),
}


@pytest.mark.parametrize("schedule", sorted(_FAILING))
@pytest.mark.parametrize(
    ("long", "eol", "line"),
    [
        ("x" * 200_000, "\n", 5),
        ("x" * 200_000, "\r\n", 5),
        ("x" * 150_000 + "\n" + "y" * 150_000 + "\n" + '""' * 70_000, "\n", 7),
        ("x" * 150_000 + "\r\n" + "y" * 150_000 + "\r\n" + "z" * 150_000, "\r\n", 7),
    ],
    ids=["one-line", "crlf", "three-lines", "three-lines-crlf"],
)
def test_a_long_value_before_the_error_leaves_its_line(
    cli: Cli, database_url: str, *, schedule: str, long: str, eol: str, line: int
) -> None:
    """Over 128 KiB, on one line or several, before an unterminated quote, a NULL upsert key or a
    value the server refuses: the error names the line it is on."""
    _setup(cli, "field-over-128k")
    for old in (cli.cwd / "data").iterdir():
        old.unlink()
    failing, message = _FAILING[schedule]
    lines = ["doc_id,body", '1,"short"', f'2,"{long}"', '3,"fine"']
    text = eol.join(lines) + eol + failing.format(eol=eol)
    if schedule == "docs-server":
        schedule = "docs"
    prefix = "keyed" if schedule == "keyed-docs" else "docs"
    (cli.cwd / "data" / f"{prefix}_1.csv").write_bytes(text.encode())
    job = _run(cli, schedule)
    assert job["status"] == "failed", job
    (failed,) = job["files"]
    assert (failed["line"], failed["error"][: len(message)]) == (line, message), failed
    (stored,) = _history(cli, schedule)
    assert f" line {line}: {message}" in stored["error"]
