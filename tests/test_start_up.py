"""What a command loads and leaves behind as it starts: structlog only for a line it writes, and
the collector's start-up pause only when ``main`` is the program itself.

Each case runs in a fresh interpreter (``sys.modules`` and the collector are per process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_SCHEDULE = """\
apiVersion: reconciler/v1
kind: Project
metadata: {name: p}
spec: {target: {table: public.t}}
---
apiVersion: reconciler/v1
kind: Schedule
metadata: {name: s}
spec: {project: p, cron: "0 6 * * *"}
"""


def _python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False,
        cwd=cwd, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize(
    ("level", "write", "loaded", "lines"),
    [
        ("info", "info", True, 1),
        ("info", "warning", True, 1),
        ("info", "debug", False, 0),
        ("warning", "info", False, 0),
        ("error", "exception", True, 1),
    ],
)
def test_structlog_is_loaded_by_the_first_line_written(
    cli_env: dict[str, str], tmp_path: Path, level: str, write: str, loaded: bool, lines: int
) -> None:
    """A line below the configured level is dropped without loading structlog; one at or above
    it loads structlog, configured as asked, and is written."""
    code = (
        "import sys\n"
        "from reconciler import logs\n"
        f"logs.configure(log_format='json', level={level!r})\n"
        "assert 'structlog' not in sys.modules\n"
        f"logs.get_logger('reconciler.test').{write}('hello', path='/x')\n"
        "print('structlog' in sys.modules)\n"
    )
    done = _python(code, cli_env, tmp_path)
    assert done.stdout.strip() == str(loaded)
    written = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(written) == lines
    for line in written:
        assert (line["event"], line["logger_name"], line["path"]) == (
            "hello", "reconciler.test", "/x"
        )  # fmt: skip
        assert line["level"] == ("error" if write == "exception" else write)


def test_a_command_that_writes_no_line_starts_without_structlog(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """reconcile next (logging set up, nothing worth a line) never loads structlog."""
    (tmp_path / "schedules.d").mkdir()
    (tmp_path / "schedules.d" / "s.yaml").write_text(_SCHEDULE)
    code = (
        "import sys\n"
        "from reconciler.cli import main\n"
        "code = main(['next', 's', '-n', '1', '--dir', 'schedules.d'])\n"
        "print(code, 'structlog' in sys.modules)\n"
    )
    done = _python(code, cli_env, tmp_path)
    assert done.stdout.splitlines()[-1] == "0 False"


def test_a_capture_after_configure_still_sees_the_lines(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """With structlog loaded already (a test's capture_logs), configure sets it up at once, so
    a capture begun later is not overwritten by the configuration waiting for a first line."""
    code = (
        "from structlog.testing import capture_logs\n"
        "from reconciler import logs\n"
        "logs.configure(log_format='json', level='info')\n"
        "with capture_logs() as captured:\n"
        "    logs.get_logger('reconciler.test').warning('seen', n=1)\n"
        "print([(c['event'], c['n'], c['log_level']) for c in captured])\n"
    )
    done = _python(code, cli_env, tmp_path)
    assert done.stdout.strip() == "[('seen', 1, 'warning')]"
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # The program: start-up frozen out of the collector's walks, the collector back on.
        ("None", "True True"),
        # Called with arguments (tests, embedding): the collector is left as it was.
        ("['next', 's', '-n', '1', '--dir', 'schedules.d']", "True False"),
    ],
)
def test_the_collector_pauses_for_start_up_only_when_main_is_the_program(
    cli_env: dict[str, str], tmp_path: Path, argv: str, expected: str
) -> None:
    """main() as the program freezes what start-up made and collects again; main(argv) leaves
    the collector alone."""
    (tmp_path / "schedules.d").mkdir()
    (tmp_path / "schedules.d" / "s.yaml").write_text(_SCHEDULE)
    code = (
        "import gc, sys\n"
        "from reconciler.cli import main\n"
        "sys.argv = ['reconcile', 'next', 's', '-n', '1', '--dir', 'schedules.d']\n"
        f"assert main({argv}) == 0\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 0)\n"
    )
    done = _python(code, cli_env, tmp_path)
    assert done.stdout.splitlines()[-1] == expected
