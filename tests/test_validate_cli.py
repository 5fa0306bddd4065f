"""``reconcile validate`` as users run it: a real subprocess, exit codes, text and JSON output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Cli

EXAMPLES = Path(__file__).parent.parent / "schedules.d"

BAD_SCHEDULE = """\
apiVersion: reconciler/v1
kind: Schedule
metadata:
  name: broken
spec:
  project: nowhere
  cron: "0 0 * * *"
  enabled: on
  sftp_override: {password: hunter2-literal}
"""


def run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m reconciler ARGS`` in ``cwd``."""
    return Cli(env, cwd)(*args)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A copy of the shipped example folder, at ``tmp_path/schedules.d``."""
    copy = tmp_path / "schedules.d"
    shutil.copytree(EXAMPLES, copy)
    return copy


def test_valid_folder_exits_0_with_a_summary(cli_env: dict[str, str], folder: Path) -> None:
    """A valid folder prints only the summary line and exits 0."""
    done = run(cli_env, folder.parent, "validate", str(folder))
    assert (done.returncode, done.stdout, done.stderr) == (0, "1 file, 3 documents: valid\n", "")


def test_invalid_folder_lists_every_finding_and_exits_1(
    cli_env: dict[str, str], folder: Path
) -> None:
    """Each finding is a path:line:col line on stdout, then a count; the exit code is 1."""
    (folder / "team").mkdir()
    (folder / "team" / "bad.yaml").write_text(BAD_SCHEDULE, encoding="utf-8")
    done = run(cli_env, folder.parent, "validate", "schedules.d")
    lines = done.stdout.splitlines()
    assert done.returncode == 1
    assert lines[0].startswith("schedules.d/team/bad.yaml:6:12: spec.project: project 'nowhere'")
    assert lines[1].startswith("schedules.d/team/bad.yaml:8:12: ambiguous YAML 1.1 boolean 'on'")
    assert lines[2].startswith("schedules.d/team/bad.yaml:9:29: spec.sftp_override.password: ")
    assert lines[3:] == ["3 problems in 1 file"]
    assert "hunter2-literal" not in done.stdout + done.stderr


def test_json_output_shape(cli_env: dict[str, str], folder: Path) -> None:
    """--output json gives a versioned ValidationResult with files, documents and findings."""
    (folder / "bad.yaml").write_text(BAD_SCHEDULE, encoding="utf-8")
    done = run(cli_env, folder.parent, "validate", "--output", "json", "schedules.d")
    result = json.loads(done.stdout)
    assert done.returncode == 1
    assert (result["apiVersion"], result["kind"], result["valid"]) == (
        "reconciler/v1",
        "ValidationResult",
        False,
    )
    assert result["files"] == ["bad.yaml", "sales.yaml"]
    assert {"kind": "Schedule", "name": "daily-sales-import", "source": "sales.yaml"}.items() <= (
        next(d for d in result["documents"] if d["name"] == "daily-sales-import").items()
    )
    assert all(set(d) == {"kind", "name", "source", "line"} for d in result["documents"])
    assert result["findings"][0] == {
        "path": "schedules.d/bad.yaml",
        "line": 6,
        "column": 12,
        "message": result["findings"][0]["message"],
    }
    assert len(result["findings"]) == 3


def test_valid_json_exits_0(cli_env: dict[str, str], folder: Path) -> None:
    """A valid folder in JSON: valid true, no findings, exit 0."""
    done = run(cli_env, folder.parent, "validate", "-o", "json", str(folder))
    result = json.loads(done.stdout)
    assert (done.returncode, result["valid"], result["findings"]) == (0, True, [])
    assert len(result["documents"]) == 3


DEFAULTS = [
    ("the default folder in the working directory", {}, []),
    ("RECONCILER_SCHEDULES_DIR", {"RECONCILER_SCHEDULES_DIR": "elsewhere"}, []),
    ("the --dir flag before the command", {}, ["--dir", "elsewhere"]),
]


@pytest.mark.parametrize(("env", "before"), [c[1:] for c in DEFAULTS], ids=[c[0] for c in DEFAULTS])
def test_folder_defaults(
    cli_env: dict[str, str], folder: Path, env: dict[str, str], before: list[str]
) -> None:
    """Without DIR, validate reads the setting: flag, then environment, then schedules.d."""
    if env or before:
        folder.rename(folder.parent / "elsewhere")
    done = run({**cli_env, **env}, folder.parent, *before, "validate")
    assert (done.returncode, done.stdout) == (0, "1 file, 3 documents: valid\n")


def test_missing_folder_is_an_error(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A missing folder prints one error line on stderr and exits 1."""
    done = run(cli_env, tmp_path, "validate", "nope")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: schedules folder nope does not exist")


def test_validate_imports_no_database_or_daemon_library(
    cli_env: dict[str, str], folder: Path
) -> None:
    """validate runs without importing psycopg, paramiko, APScheduler or watchfiles."""
    child = (
        "import sys\n"
        "from reconciler.cli import main\n"
        f"code = main(['validate', {str(folder)!r}])\n"
        "heavy = ('psycopg', 'paramiko', 'apscheduler', 'watchfiles')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


ENV_FILE = """\
# production credentials
export DATABASE_URL=postgresql://app:Pr0d-pa55word@db.internal:5432/sales
AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
STRIPE_KEY=sk_live_51Habcdefghijklmnopqrstuvwxyz0123456789
"""
SECRET_FRAGMENTS = ("Pr0d-pa55word", "db.internal", "wJalrXUtnFEMI", "sk_live_51H", "STRIPE")


def test_a_symlinked_secret_file_is_named_never_printed(
    cli_env: dict[str, str], folder: Path, tmp_path: Path
) -> None:
    """``schedules.d/x.yaml -> ~/.env``: validate names the file and prints none of it."""
    secret = tmp_path / ".env"
    secret.write_text(ENV_FILE, encoding="utf-8")
    (folder / "x.yaml").symlink_to(secret)
    for output in ("text", "json"):
        done = run(cli_env, folder.parent, "validate", "-o", output, "schedules.d")
        assert done.returncode == 1
        for fragment in SECRET_FRAGMENTS:
            assert fragment not in done.stdout + done.stderr
    done = run(cli_env, folder.parent, "validate", "schedules.d")
    assert done.stdout.splitlines() == [
        "schedules.d/x.yaml:2:1: a document must be a mapping with apiVersion, kind, metadata "
        "and spec, not a single value (is this a YAML file?)",
        "1 problem in 1 file",
    ]


NOT_STORABLE = [
    # (id, spec line, the finding): accepted once, refused by PostgreSQL or the run later
    ("interval past integer", "  interval: 2147483648",
     "schedules.d/bad.yaml:7:13: spec.interval: a duration must be at most 2147483647 seconds "
     "(about 68 years), got 2147483648"),
    ("5000 digits", "  interval: " + "9" * 5000,
     "schedules.d/bad.yaml:7:13: this number is far too large for any setting "
     "(none takes more than 2147483647)"),
    ("a NUL character", '  interval: 2h\n  timezone: "UTC\\0"',
     "schedules.d/bad.yaml:8:13: contains a NUL character ('\\0'), which PostgreSQL cannot "
     "store: remove it"),
    ("a tz folder", "  interval: 2h\n  timezone: America",
     "schedules.d/bad.yaml:8:13: spec.timezone: 'America' is a region, not a time zone: name a "
     "zone in it, such as 'America/New_York' or 'Europe/Berlin'"),
    ("a broken callback", "  interval: 2h\n  callback_url: 'http://[::1/'",
     "schedules.d/bad.yaml:8:17: spec.callback_url: must be a valid URL: check the host (an "
     "IPv6 address goes in [brackets]) and the port (a number up to 65535)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "finding"), [c[1:] for c in NOT_STORABLE], ids=[c[0] for c in NOT_STORABLE]
)
def test_values_the_database_would_refuse_fail_validate(
    cli_env: dict[str, str], folder: Path, spec: str, finding: str
) -> None:
    """validate exits 1 with one located finding, never a traceback."""
    head = BAD_SCHEDULE.partition("  cron:")[0].replace("nowhere", "sales_project")
    document = head + spec + "\n"
    (folder / "bad.yaml").write_text(document, encoding="utf-8")
    done = run(cli_env, folder.parent, "validate", "schedules.d")
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.splitlines() == [finding, "1 problem in 1 file"]


def test_a_target_among_the_tools_own_tables_fails_validate(
    cli_env: dict[str, str], folder: Path
) -> None:
    """A project loading into the exactly-once ledger is refused at its table."""
    text = (folder / "sales.yaml").read_text(encoding="utf-8")
    (folder / "sales.yaml").write_text(
        text.replace("table: public.sales", "table: public.cpi_imported_files"), encoding="utf-8"
    )
    done = run(cli_env, folder.parent, "validate", "schedules.d")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].endswith(
        ": spec.target.table: public.cpi_imported_files is one of reconcile's own tables (its "
        "schedules, jobs, record of imported files or load stage), which an import would "
        "corrupt: import into a table of your own"
    )
