"""``reconcile completion``: scripts for bash, zsh and fish, read from the command line itself."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from reconciler.cli import build_parser, main
from reconciler.commands.completing import SHELLS, script


def _script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def _complete(bash_script: str, line: str) -> list[str]:
    """What bash offers for ``line`` (the word being completed is its last, maybe empty)."""
    words = line.split(" ")
    program = (
        f"{bash_script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        '_reconcile; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return [w for w in done.stdout.splitlines() if w]


def test_the_bash_script_is_valid_bash(capsys: pytest.CaptureFixture[str]) -> None:
    """``bash -n`` reads the script without a syntax error, and it registers the function."""
    text = _script("bash", capsys)
    checked = subprocess.run(
        ["bash", "-n"], check=False, input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert text.rstrip().endswith("complete -o default -F _reconcile reconcile")


COMPLETIONS = [
    # (id, the command line being completed, what bash offers)
    ("commands", "reconcile sta", ["status"]),
    ("a command's flag", "reconcile status --fa", ["--failing"]),
    ("after a global flag with a value", "reconcile --dir x st", ["status"]),
    ("a flag's choices", "reconcile plan -o ma", ["markdown"]),
    ("the shells", "reconcile completion ", ["bash", "zsh", "fish"]),
    ("a flag of another command is not offered", "reconcile validate --fail", []),
    ("a value without choices: files", "reconcile status --project ", []),
    (
        "flags only after a dash",
        "reconcile completion -",
        ["-h", "--help", "--output", "-o", "--no-color", "--debug", "--log-level", "--log-format"],
    ),
]


@pytest.mark.parametrize(
    ("line", "offered"), [c[1:] for c in COMPLETIONS], ids=[c[0] for c in COMPLETIONS]
)
def test_bash_completes(line: str, offered: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The script offers commands, each command's own flags and the flags' choices."""
    assert sorted(_complete(_script("bash", capsys), line)) == sorted(offered)


def test_every_command_and_flag_is_in_every_script() -> None:
    """The scripts come from the parser: each command, and each flag of each command, appears."""
    vocabulary = build_parser().parse_args(["completion", "bash"]).vocabulary
    for shell in SHELLS:
        text = script(shell, vocabulary)
        for name, (_, flags, _) in vocabulary.commands.items():
            assert name in text, (shell, name)
            for flag in flags:
                assert any(n.lstrip("-") in text for n in flag.names), (shell, name, flag)


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_other_shells_read_their_script(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    """zsh and fish parse their scripts (``-n``) where they are installed."""
    text = _script(shell, capsys)
    assert "reconcile" in text
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed here")
    checked = subprocess.run([shell, "-n"], check=False, input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_an_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Only bash, zsh and fish: anything else exits 1 naming them."""
    assert main(["completion", "tcsh"]) == 1
    assert "'bash', 'zsh', 'fish'" in capsys.readouterr().err
