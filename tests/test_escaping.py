"""Every value from outside is escaped for the output it reaches: terminal, GitHub, Markdown.

The escaping functions, table-driven; then the real CLI (subprocesses) with file names, names
and PostgreSQL messages that hold newlines, ESC and BEL, and ``::error::``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from conftest import Cli
from daemons import project_yaml, schedule_yaml, wait_until
from import_rows import SALES, add_project, add_schedule, count, jobs

from reconciler.escaping import (
    capped,
    fence,
    markdown,
    markdown_code,
    terminal,
    workflow_message,
    workflow_property,
)
from reconciler.model.plans import make_plan
from reconciler.model.rendering import render_markdown, render_plan
from tests.test_rendering import OWNER, schedule

EVIL = "sales_\x1b[31mred\nfake  imported  ok.csv"
CONTROLS = ("\x1b", "\x07", "\x9b", "\r")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain name.csv", "plain name.csv"),
        ("a\nb", "a\\nb"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\x1b[31mred\x07", "\\x1b[31mred\\x07"),
        ("c1\x9bend\x7f", "c1\\x9bend\\x7f"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("naïve ünïcode", "naïve ünïcode"),
    ],
)
def test_terminal_shows_control_characters_as_visible_escapes(text: str, shown: str) -> None:
    """Control characters (C0, DEL, C1, bidi overrides) become visible escapes; text stays."""
    assert terminal(text) == shown


def test_terminal_lines_keeps_only_line_feeds() -> None:
    """A text of our own spanning lines keeps its line feeds, every other control escaped."""
    assert terminal("a\nb\x1b\r", lines=True) == "a\nb\\x1b\\r"


@pytest.mark.parametrize(
    ("text", "message", "prop"),
    [
        ("50%", "50%25", "50%25"),
        ("a\n::error::x", "a%0A::error::x", "a%0A%3A%3Aerror%3A%3Ax"),
        ("a\r,b:c", "a%0D,b:c", "a%0D%2Cb%3Ac"),
        ("\x1b[31m", "\\x1b[31m", "\\x1b[31m"),
    ],
)
def test_workflow_commands_use_the_encodings_github_documents(
    text: str, message: str, prop: str
) -> None:
    """``%``, CR and LF in messages; ``:`` and ``,`` in properties too; other controls visible."""
    assert workflow_message(text) == message
    assert workflow_property(text) == prop


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert\\(1\\)&gt;"),
        ("a | b\nc", "a \\| b\\\\nc"),
        ("**bold** [x](y)", "\\*\\*bold\\*\\* \\[x\\]\\(y\\)"),
    ],
)
def test_markdown_makes_markup_and_html_inert_on_one_line(text: str, shown: str) -> None:
    """Markup is backslash-escaped, HTML is entities, a newline never breaks a table cell."""
    assert markdown(text) == shown
    assert "\n" not in markdown(text)


def test_markdown_code_and_fence_outgrow_backticks() -> None:
    """A code span or fence is longer than any run of backticks in what it holds."""
    assert markdown_code("a`b") == "``a`b``"
    assert markdown_code("`x") == "`` `x ``"
    assert fence("x ````` y") == "``````"


def test_capped_says_how_much_was_left_out() -> None:
    """Long texts are cut with a count of the rest; short ones are unchanged."""
    assert capped("short") == "short"
    assert capped("x" * 2500) == "x" * 2000 + "… (500 more characters)"


def test_plans_escape_names_and_locations() -> None:
    """A name or file with a newline, ESC or ``::error::`` stays on its line of the plan."""
    row = schedule("evil\n::error::pwned\x1b[31m", None)
    text = render_plan(make_plan([row], [], owner=OWNER))
    assert not any(line.startswith("::") for line in text.splitlines())
    assert "\x1b" not in text
    comment = render_markdown(
        make_plan([row], [], owner=OWNER), now=datetime(2026, 1, 1, tzinfo=UTC), limit=400,
        saved_as="plan`\n<b>.md",
    )  # fmt: skip
    assert "\x1b" not in comment
    assert "<b>" not in comment
    assert not any(line.startswith("::") for line in comment.splitlines())


def _clean(text: str) -> None:
    for char in CONTROLS:
        assert char not in text, repr(text)
    assert not any(line.lstrip().startswith("::") for line in text.splitlines()), text


def test_run_and_history_escape_file_names_and_postgresql_messages(
    cli: Cli, database_url: str
) -> None:
    """A file named with ESC and a newline, and a value with ESC and BEL that PostgreSQL echoes,
    print as visible escapes in run (text, and console logs) and history: no fake lines."""
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    add_project(database_url, target={"table": "public.sales"})
    add_schedule(database_url, local_files=["../data/sales_*.csv"])
    data = cli.cwd / "data"
    data.mkdir()
    (data / EVIL).write_text("sale_id,sold_at,amount\n5,2026-11-01,\x1b[31mx\x07\n")
    done = cli("run", "daily-sales-import", env={"RECONCILER_LOG_FORMAT": "console"})
    assert done.returncode == 1
    _clean(done.stdout)
    _clean(done.stderr)
    assert len(done.stdout.splitlines()) == 2, done.stdout
    assert "sales_\\x1b[31mred\\nfake  imported  ok.csv" in done.stdout
    assert "\\x1b[31mx\\x07" in done.stdout + done.stderr
    shown = cli("history", "daily-sales-import")
    assert shown.returncode == 0, shown.stderr
    _clean(shown.stdout)
    assert len(shown.stdout.splitlines()) == 2, shown.stdout
    status = cli("status")
    _clean(status.stdout)


def test_plan_against_and_validate_cannot_be_made_to_emit_workflow_commands(
    cli: Cli, tmp_path: Path
) -> None:
    """A YAML file named with a newline and ``::error::``, valid or not, stays on one line of
    ``plan --against`` and of ``validate --output github``."""
    main = tmp_path / "main"
    main.mkdir()
    folder = cli.cwd / "schedules.d"
    (folder / "x\n::error::pwned.yaml").write_text(project_yaml() + schedule_yaml("nightly"))
    planned = cli("plan", "--against", str(main))
    assert planned.returncode == 0, planned.stderr
    _clean(planned.stdout)
    assert "x\\n::error::pwned.yaml" in planned.stdout
    (folder / "y\n::error::bad\x1b.yaml").write_text("kind: [\n")
    refused = cli("plan", "--against", str(main))
    assert refused.returncode != 0
    _clean(refused.stdout)
    _clean(refused.stderr)
    github = cli("validate", "--output", "github")
    assert "\x1b" not in github.stdout
    commands = [line for line in github.stdout.splitlines() if line.startswith("::")]
    assert len(commands) == 1, github.stdout  # the one finding, nothing injected
    assert commands[0].startswith("::error file=schedules.d/y%0A%3A%3Aerror%3A%3Abad\\x1b.yaml,")


def test_a_huge_error_is_capped_where_printed(cli: Cli, database_url: str) -> None:
    """An error echoing its input (a 100,000-column header, a 300,000-character value that
    PostgreSQL quotes) prints kilobytes, not megabytes."""
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    add_project(database_url, target={"table": "public.sales"})
    add_schedule(database_url, local_files=["../data/sales_*.csv"])
    data = cli.cwd / "data"
    data.mkdir()
    header = ",".join(f"column_{i}" for i in range(100_000))
    (data / "sales_wide.csv").write_text(header + "\n" + ",".join("1" * 100_000) + "\n")
    (data / "sales_long.csv").write_text(f"sale_id,sold_at,amount\n{'x' * 300_000},,\n")
    done = cli("run", "daily-sales-import")
    assert done.returncode == 1
    assert len(done.stdout) + len(done.stderr) < 30_000, (len(done.stdout), len(done.stderr))
    shown = cli("history", "daily-sales-import")
    assert len(shown.stdout) < 10_000


def test_other_libraries_logs_and_warnings_reach_a_json_log_as_json(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """psycopg's "error ignored terminating ..." (the ``logging`` module) and ``warnings``
    become JSON lines like ours."""
    code = (
        "import logging, warnings\n"
        "from reconciler import logs\n"
        "logs.configure(log_format='json')\n"
        "logging.getLogger('psycopg').warning('error ignored terminating %r: %s', 'c', 'x')\n"
        "warnings.warn('something odd')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
        check=False, cwd=tmp_path, env=cli_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    events = [json.loads(line) for line in lines]
    assert events[0]["event"] == "error ignored terminating 'c': x"
    assert events[0]["logger_name"] == "psycopg"
    assert "something odd" in events[1]["event"]


def test_sigterm_on_run_records_the_job_failed_and_rolls_back(cli: Cli, database_url: str) -> None:
    """SIGTERM while ``reconcile run`` imports: the job is recorded failed ("interrupted ...
    SIGTERM"), no row stays, the exit code is 143 and every log line is JSON."""
    with psycopg.connect(database_url) as conn:
        conn.execute(SALES)
    add_project(database_url, target={"table": "public.sales"})
    add_schedule(database_url, local_files=["../data/sales_*.csv"])
    data = cli.cwd / "data"
    data.mkdir()
    rows = "".join(f"{i},2026-11-01,{i % 100}.50\n" for i in range(3_000_000))
    (data / "sales_big.csv").write_text("sale_id,sold_at,amount\n" + rows)
    process = cli.popen("run", "daily-sales-import")
    try:
        wait_until(
            lambda: any(j["status"] == "running" for j in jobs(database_url)),
            timeout=30, what="the job running",
        )  # fmt: skip
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    (job,) = jobs(database_url)
    assert job["status"] == "failed"
    assert job["error"].startswith("interrupted by SIGTERM")
    assert "SIGTERM" in job["error"]
    assert count(database_url) == 0
    assert "error: interrupted by SIGTERM" in stderr
    for line in stderr.splitlines():
        if not line.startswith("error: "):
            json.loads(line)
