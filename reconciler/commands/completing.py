"""``reconcile completion bash|zsh|fish``: a shell completion script for the commands and flags.

``reconciler.cli`` hands over the command line's vocabulary, read from its argparse parser (each
command with its help, flags and the flags' choices), so a new command or flag completes without
an edit here. The scripts are small and static: nothing runs ``reconcile`` while completing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.errors import EXIT_OK, UsageError
from reconciler.settings import Settings

if TYPE_CHECKING:
    from reconciler.commands.arguments import CompletionArguments

__all__ = ["SHELLS", "Flag", "Vocabulary", "completion", "script"]


@dataclass(frozen=True, slots=True)
class Flag:
    """One option: its spellings, whether it takes a value, and the values it accepts."""

    names: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """What completes: global flags, and each command with its help, flags and argument choices."""

    flags: tuple[Flag, ...]
    commands: dict[str, tuple[str, tuple[Flag, ...], tuple[str, ...]]]

    def value_flags(self) -> dict[tuple[str, ...], tuple[str, ...]]:
        """Each flag that takes a value (its spellings), with its choices (none: a file name or
        free text)."""
        every = self.flags + tuple(f for _, flags, _ in self.commands.values() for f in flags)
        return {flag.names: flag.choices for flag in every if flag.takes_value}


def _words(flags: tuple[Flag, ...]) -> str:
    return " ".join(name for flag in flags for name in flag.names)


def _bash(vocabulary: Vocabulary) -> str:
    values = "\n".join(
        f"        {'|'.join(names)}) "
        f'COMPREPLY=($(compgen -W "{" ".join(choices)}" -- "$cur")); return ;;'
        for names, choices in vocabulary.value_flags().items()
        if choices
    )
    files = "|".join(
        name for names, choices in vocabulary.value_flags().items() if not choices for name in names
    )
    commands = " ".join(vocabulary.commands)
    cases = "\n".join(
        f'        {name}) flags="{_words(flags)}" arguments="{" ".join(arguments)}" ;;'
        for name, (_, flags, arguments) in vocabulary.commands.items()
    )
    return f"""\
# bash completion for reconcile. Load it in ~/.bashrc: eval "$(reconcile completion bash)"
_reconcile() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local command="" word flags arguments i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        case " {commands} " in *" $word "*) command=$word; break ;; esac
    done
    case $prev in
{values}
        {files}) return ;;
    esac
    case $command in
{cases}
        *) flags="{_words(vocabulary.flags)}" arguments="{commands}" ;;
    esac
    case $cur in
        -*) COMPREPLY=($(compgen -W "$flags" -- "$cur")) ;;
        *) COMPREPLY=($(compgen -W "$arguments" -- "$cur")) ;;
    esac
}}
complete -o default -F _reconcile reconcile
"""


def _zsh(vocabulary: Vocabulary) -> str:
    return (
        "#compdef reconcile\n"
        '# zsh completion for reconcile. Load it in ~/.zshrc: eval "$(reconcile completion zsh)"\n'
        "# It is the bash script, through zsh's bashcompinit.\n"
        "autoload -U +X compinit && compinit\n"
        "autoload -U +X bashcompinit && bashcompinit\n"
        + "\n".join(line for line in _bash(vocabulary).splitlines() if not line.startswith("#"))
        + "\n"
    )


def _fish_text(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_flag(flag: Flag, condition: str) -> str:
    words = [f"complete -c reconcile -n {_fish_text(condition)}"]
    for name in flag.names:
        words.append(f"-l {name[2:]}" if name.startswith("--") else f"-s {name[1:]}")
    if flag.takes_value:
        words.append("-r")
        if flag.choices:
            words.append(f"-f -a {_fish_text(' '.join(flag.choices))}")
    return " ".join([*words, f"-d {_fish_text(flag.help)}"])


def _fish(vocabulary: Vocabulary) -> str:
    lines = [
        "# fish completion for reconcile. Load it: reconcile completion fish | source",
        "# (or save it as ~/.config/fish/completions/reconcile.fish)",
    ]
    for name, (help_, _, _) in vocabulary.commands.items():
        lines.append(
            f"complete -c reconcile -n __fish_use_subcommand -a {name} -d {_fish_text(help_)}"
        )
    lines += [_fish_flag(flag, "__fish_use_subcommand") for flag in vocabulary.flags]
    for name, (_, flags, arguments) in vocabulary.commands.items():
        condition = f"__fish_seen_subcommand_from {name}"
        lines += [_fish_flag(flag, condition) for flag in flags]
        if arguments:
            choices = _fish_text(" ".join(arguments))
            lines.append(f"complete -c reconcile -n {_fish_text(condition)} -a {choices}")
    return "\n".join(lines) + "\n"


SHELLS: dict[str, Callable[[Vocabulary], str]] = {"bash": _bash, "zsh": _zsh, "fish": _fish}


def script(shell: str, vocabulary: Vocabulary) -> str:
    """The completion script for ``shell`` (one of ``SHELLS``)."""
    if shell not in SHELLS:
        raise UsageError(f"no completion for {shell!r}: choose one of {', '.join(SHELLS)}")
    return SHELLS[shell](vocabulary)


def completion(arguments: CompletionArguments, settings: Settings) -> int:
    """Print the completion script of the shell asked for."""
    del settings  # the script depends on the command line only
    sys.stdout.write(script(arguments.shell, arguments.vocabulary))
    return EXIT_OK
