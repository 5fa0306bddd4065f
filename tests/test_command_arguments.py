"""The seam between the command line and the commands: typed arguments, never argparse."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import reconciler.commands
from reconciler import cli
from reconciler.commands.arguments import (
    CompletionArguments,
    ExportArguments,
    ForgetArguments,
    HistoryArguments,
    NextArguments,
    NoArguments,
    PlanArguments,
    RunArguments,
    SqlArguments,
    StatusArguments,
)

# One command line per command; serve is left out: the daemon sits beside the commands, not
# under them (import-linter), so its function takes the NoArguments it is given as an object.
_SAMPLES = {
    "validate": ["validate", "folder"],
    "next": ["next", "nightly", "-n", "3"],
    "schema": ["schema"],
    "plan": ["plan", "--adopt"],
    "apply": ["apply"],
    "status": ["status", "--failing"],
    "export": ["export", "--out", "there"],
    "run": ["run", "nightly"],
    "history": ["history", "nightly"],
    "forget": ["forget", "sales"],
    "sql": ["sql", "-c", "SELECT 1"],
    "completion": ["completion", "fish"],
}


def _built(argv: list[str]) -> object:
    args = cli.build_parser().parse_args(argv)
    return cli._arguments(args.command or ("plan" if args.dry_run else "apply"), args)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["validate"], NoArguments()),
        (["next", "nightly"], NextArguments("nightly", 5)),
        (["next", "nightly", "--count", "2"], NextArguments("nightly", 2)),
        ([], PlanArguments()),
        (["--dry-run", "--detailed-exitcode"], PlanArguments(detailed_exitcode=True)),
        (["--adopt", "plan", "--against", "main"], PlanArguments(adopt=True, against="main")),
        (["apply", "--plan-file", "p.md"], PlanArguments(plan_file="p.md")),
        (["status"], StatusArguments()),
        (["status", "nightly", "--project", "sales"], StatusArguments("nightly", "sales")),
        (["status", "--failing"], StatusArguments(failing=True)),
        (["export"], ExportArguments()),
        (["run", "nightly"], RunArguments("nightly")),
        (["history", "nightly", "--limit", "3"], HistoryArguments("nightly", 3)),
        (["history", "nightly"], HistoryArguments("nightly", 20)),
        (["forget", "sales", "--path", "*.csv"], ForgetArguments("sales", "*.csv")),
        (["sql", "-f", "a.sql"], SqlArguments(file="a.sql")),
        (["sql", "-c", "SELECT 1"], SqlArguments(statements="SELECT 1")),
        (["serve", "--http-address", "127.0.0.1:0"], NoArguments()),
    ],
)
def test_the_cli_builds_each_commands_arguments(argv: list[str], expected: object) -> None:
    """Flags given before or after the command, and defaults, land in the command's value."""
    assert _built(argv) == expected


def test_completion_gets_the_vocabulary_of_the_parser() -> None:
    """completion's arguments carry the shell and the vocabulary read from the parser."""
    built = _built(["completion", "bash"])
    assert isinstance(built, CompletionArguments)
    assert built.shell == "bash"
    assert "history" in built.vocabulary.commands


@pytest.mark.parametrize("command", sorted(_SAMPLES))
def test_each_command_takes_the_arguments_the_cli_builds(command: str) -> None:
    """The function a command runs names, as its first parameter's type, the value it gets."""
    handler = cli._resolve(command)
    first = next(iter(inspect.signature(handler).parameters.values()))
    assert first.annotation == type(_built(_SAMPLES[command])).__name__


def test_every_command_has_a_sample() -> None:
    """A new command is added to the samples above (and so checked) in the same change."""
    assert set(_SAMPLES) | {"serve"} == set(cli._COMMANDS)


@pytest.mark.parametrize(
    "path", sorted(Path(reconciler.commands.__file__).parent.glob("*.py")), ids=lambda p: p.name
)
def test_no_command_module_imports_argparse(path: Path) -> None:
    """argparse stays in the CLI: a command module never imports it."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert "argparse" not in imported
