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
    assert (done.returncode, done.stdout, done.stderr) == (0, "2 files, 4 documents: valid\n", "")


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
    assert result["files"] == ["bad.yaml", "customers.yaml", "sales.yaml"]
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
    assert len(result["documents"]) == 4


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
    assert (done.returncode, done.stdout) == (0, "2 files, 4 documents: valid\n")


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
