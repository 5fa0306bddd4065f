"""A plan that apply would refuse: ``--dry-run`` says so in every format and exits 3 as apply does;
the guards' messages name the override that works for who refused. Real processes and real
PostgreSQL, then the pure pieces: each refusal's wording and the two settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Cli
from daemons import project_yaml, schedule_yaml

from reconciler.errors import UsageError
from reconciler.model.guards import Command, Guard, Refusal
from reconciler.model.rendering import MARKER
from reconciler.settings import load_settings


def _seed(cli: Cli, schedules: int = 3) -> Path:
    """A project and ``schedules`` schedules, one file each, applied."""
    folder = cli.cwd / "schedules.d"
    (folder / "project.yaml").write_text(project_yaml())
    for i in range(schedules):
        (folder / f"s{i}.yaml").write_text(schedule_yaml(f"s{i}"))
    done = cli("apply")
    assert done.returncode == 0, done.stderr
    return folder


def _too_many_deletes(folder: Path) -> None:
    for i in range(3):
        (folder / f"s{i}.yaml").unlink()


def _emptied(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def _broken(folder: Path) -> None:
    (folder / "broken.yaml").write_text(schedule_yaml("s9") + "  bogus: 1\n")


# guard, how the folder is changed, flags that make it refused, what the messages name
GUARDS = {
    "max_deletes": (
        _too_many_deletes,
        ("--max-deletes", "2"),
        ["reconcile apply --max-deletes 3", "RECONCILER_MAX_DELETES=3"],
    ),
    "empty_folder": (
        _emptied,
        (),
        ["reconcile apply --allow-empty", "RECONCILER_ALLOW_EMPTY=true"],
    ),
    "invalid_folder": (_broken, (), ["broken.yaml:", "bogus"]),
}


@pytest.mark.parametrize("output", ["text", "json", "markdown"])
@pytest.mark.parametrize("guard", list(GUARDS))
def test_a_dry_run_apply_would_refuse_shows_it_and_exits_3(
    cli: Cli, guard: str, output: str
) -> None:
    """Each guard, in each format: the refusal is rendered, the message names the overrides of
    apply and of the daemon, and the exit code is 3 even with --detailed-exitcode."""
    change, flags, named = GUARDS[guard]
    change(_seed(cli))
    saved = cli.cwd / "whole.md"
    done = cli(
        "--dry-run", "--detailed-exitcode", "--output", output, "--plan-file", str(saved), *flags
    )
    assert done.returncode == 3, done.stderr
    for words in named:
        assert words in done.stderr
    if output == "text":
        assert done.stdout.splitlines()[-1].startswith("Refused: ")
    elif output == "json":
        document = json.loads(done.stdout)
        assert document["kind"] == "Plan"
        assert document["refused"]["guard"] == guard
        for words in named:
            assert words in document["refused"]["message"]
    else:
        for comment in (done.stdout, saved.read_text()):
            assert comment.startswith(MARKER + "\n")
            assert "> [!CAUTION]\n> **Apply would refuse this** (exit 3): " in comment
            for words in named:
                assert words in comment
    if guard != "invalid_folder" and output != "json":
        assert "- Schedule s0" in done.stdout
    applied = cli("apply", *flags)
    assert applied.returncode == 3, "apply refuses what the dry run said it would"


@pytest.mark.parametrize(
    ("guard", "given", "env"),
    [
        ("max_deletes", ("--max-deletes", "3"), {}),
        ("max_deletes", (), {"RECONCILER_MAX_DELETES": "3"}),
        ("empty_folder", ("--allow-empty",), {}),
        ("empty_folder", (), {"RECONCILER_ALLOW_EMPTY": "true"}),
    ],
)
def test_the_override_lets_the_plan_through(
    cli: Cli, guard: str, given: tuple[str, ...], env: dict[str, str]
) -> None:
    """With its override, as a flag or a setting, the plan is not refused: exit 2 (changes),
    ``refused`` is null, and apply applies it."""
    change, _, _ = GUARDS[guard]
    change(_seed(cli))
    done = cli("--dry-run", "--detailed-exitcode", "--output", "json", *given, env=env)
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout)["refused"] is None
    assert cli("apply", *given, env=env).returncode == 0


def test_the_delete_limit_setting_refuses_too(cli: Cli) -> None:
    """RECONCILER_MAX_DELETES lowers the limit as --max-deletes does; the flag wins over it."""
    _too_many_deletes(_seed(cli))
    low = {"RECONCILER_MAX_DELETES": "2"}
    assert cli("--dry-run", env=low).returncode == 3
    assert cli("apply", env=low).returncode == 3
    assert cli("--dry-run", "--max-deletes", "3", env=low).returncode == 0


def test_apply_names_its_own_override(cli: Cli) -> None:
    """Refused, apply names its flag, not the daemon's setting."""
    _too_many_deletes(_seed(cli))
    refused = cli("apply", "--max-deletes", "2")
    assert refused.returncode == 3
    assert "run `reconcile apply --max-deletes 3`" in refused.stderr
    assert "RECONCILER_MAX_DELETES" not in refused.stderr


DELETES = Refusal(Guard.MAX_DELETES, "the plan deletes 11 rows, more than the limit of 10", 11)
EMPTY = Refusal(Guard.EMPTY_FOLDER, "the folder declares nothing")


APPLY_DELETES, SERVE_DELETES = (
    "`reconcile apply --max-deletes 11`",
    "`reconcile serve --max-deletes 11`",
)
APPLY_EMPTY, SERVE_EMPTY = "`reconcile apply --allow-empty`", "`reconcile serve --allow-empty`"


@pytest.mark.parametrize(
    ("refusal", "command", "named", "not_named"),
    [
        (DELETES, Command.APPLY, [APPLY_DELETES], ["RECONCILER_", "serve"]),
        (DELETES, Command.SERVE, ["RECONCILER_MAX_DELETES=11", SERVE_DELETES], ["apply"]),
        (DELETES, Command.PLAN, [APPLY_DELETES, "RECONCILER_MAX_DELETES=11", SERVE_DELETES], []),
        (EMPTY, Command.APPLY, [APPLY_EMPTY], ["RECONCILER_", "serve"]),
        (EMPTY, Command.SERVE, ["RECONCILER_ALLOW_EMPTY=true", SERVE_EMPTY], ["apply"]),
        (EMPTY, Command.PLAN, [APPLY_EMPTY, "RECONCILER_ALLOW_EMPTY=true", SERVE_EMPTY], []),
    ],
)
def test_a_refusal_names_the_override_of_who_refused(
    refusal: Refusal, command: Command, named: list[str], not_named: list[str]
) -> None:
    """Apply is told its flag, the daemon its setting (or serve's flag), a preview both."""
    message = refusal.message(command)
    assert message.startswith(refusal.reason + ". ")
    assert all(words in message for words in named)
    assert not any(words in message for words in not_named)


@pytest.mark.parametrize(
    ("environ", "flags", "max_deletes", "allow_empty"),
    [
        ({}, {}, 10, False),
        ({"RECONCILER_MAX_DELETES": "25", "RECONCILER_ALLOW_EMPTY": "true"}, {}, 25, True),
        ({"RECONCILER_ALLOW_EMPTY": "0"}, {}, 10, False),
        ({"RECONCILER_MAX_DELETES": "25"}, {"max_deletes": 3, "allow_empty": True}, 3, True),
    ],
)
def test_the_guard_settings(
    environ: dict[str, str], flags: dict[str, object], max_deletes: int, allow_empty: bool
) -> None:
    """Flag, then RECONCILER_MAX_DELETES / RECONCILER_ALLOW_EMPTY, then 10 and false."""
    settings = load_settings(environ=environ, **flags)  # type: ignore[arg-type]
    assert (settings.max_deletes, settings.allow_empty) == (max_deletes, allow_empty)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RECONCILER_MAX_DELETES": "many"}, "RECONCILER_MAX_DELETES='many' is not a whole number"),
        ({"RECONCILER_MAX_DELETES": "-1"}, "RECONCILER_MAX_DELETES='-1' is out of range"),
        ({"RECONCILER_ALLOW_EMPTY": "sure"}, "RECONCILER_ALLOW_EMPTY='sure' is not one of: true"),
    ],
)
def test_a_bad_guard_setting_is_a_usage_error(environ: dict[str, str], message: str) -> None:
    """A value that cannot work is refused at start, naming the variable."""
    with pytest.raises(UsageError, match=message):
        load_settings(environ=environ)
