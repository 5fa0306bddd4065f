"""The ``reconcile`` console script: argv -> settings -> one function per command.

This is the one place that catches our errors: it prints ``error: ...`` and returns the documented
exit code (``--debug`` shows the traceback); with ``--output json`` stdout also gets an ``Error``
document. argparse's own complaints become ``UsageError`` (exit 1, never 2, which means "changes
present"). Command modules are imported only when their command runs, so ``--help`` and
``validate`` never import psycopg, paramiko, APScheduler or watchfiles.

Run as the program (the console script, ``python -m reconciler``), ``main`` also spares the
process the garbage collector's walks over what start-up built (``_started``): a fifth less
time for a short command such as ``reconcile run`` of a small file.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from reconciler import __version__
from reconciler.commands import output
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
from reconciler.commands.completing import SHELLS, Flag, Vocabulary
from reconciler.errors import EXIT_ERROR, ReconcileError, Terminated, UsageError
from reconciler.escaping import capped, terminal
from reconciler.settings import Settings, load_settings

__all__ = ["main"]

# command name -> "module:function"; each function takes (arguments, settings), its arguments
# the value ``_arguments`` builds for it, and returns an exit code.
_COMMANDS: dict[str, str] = {
    "validate": "reconciler.commands.offline:validate",
    "next": "reconciler.commands.upcoming:next_runs",
    "schema": "reconciler.commands.offline:schema",
    "plan": "reconciler.commands.reconciling:plan",
    "apply": "reconciler.commands.reconciling:apply",
    "status": "reconciler.commands.reconciling:status",
    "export": "reconciler.commands.reconciling:export",
    "run": "reconciler.commands.running:run",
    "history": "reconciler.commands.running:history",
    "forget": "reconciler.commands.forgetting:forget",
    "sql": "reconciler.commands.querying:sql",
    "serve": "reconciler.daemon.serving:serve",
    "completion": "reconciler.commands.completing:completion",
}

# Output formats beyond text and json, and the commands that write them.
_SPECIAL_OUTPUTS = {"github": ("validate",), "markdown": ("plan", "apply")}

# Commands that never log: logging is not set up at all (``logs`` and the ``logging`` module it
# routes stay unimported; structlog itself is loaded only when a line is written).
_SILENT = frozenset({"validate", "schema", "completion"})
# Commands that never open a session: the store, which names sessions, is not even imported.
_OFFLINE = _SILENT | {"next"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is our ``UsageError`` (exit 1): exit 2 means "changes present"."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        "-o",
        choices=("text", "json", "github", "markdown"),
        help="output format: text, json; github (validate), markdown (plan, apply)",
    )
    parser.add_argument("--no-color", action="store_true", help="never colour the output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--log-level", help="debug, info, warning or error")
    parser.add_argument("--log-format", choices=("json", "console"), help="log line format")


def _database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="management database (RECONCILER_DATABASE_URL)")
    parser.add_argument("--state-dir", help="embedded database and local state")
    parser.add_argument("--owner", help="owner id of the rows this reconciler manages")


def _guard_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="allow deleting every owned row when the folder declares nothing "
        "(RECONCILER_ALLOW_EMPTY)",
    )
    parser.add_argument(
        "--max-deletes",
        type=int,
        help="refuse plans deleting more rows than this (RECONCILER_MAX_DELETES, default 10)",
    )


def _apply_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 2 when the plan has changes, 0 when it has none; 3 when a guard refuses it",
    )
    _guard_flags(parser)
    parser.add_argument(
        "--adopt", action="store_true", help="take ownership of existing rows whose names clash"
    )
    parser.add_argument(
        "--against",
        metavar="DIR",
        help="plan offline against another schedules folder (the main branch), no database",
    )
    parser.add_argument(
        "--plan-file",
        metavar="FILE",
        help="with --output markdown: where the whole plan is saved (default reconcile-plan.md)",
    )


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", dest="schedules_dir", help="schedules folder (default schedules.d)"
    )
    parser.add_argument("--http-address", help="host:port of /healthz, /readyz and /metrics")
    parser.add_argument(
        "--delete-settle-seconds",
        type=int,
        help="how long the folder must read the same before a delete is applied (default 10)",
    )
    _guard_flags(parser)
    _database(parser)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, with every subcommand and flag."""
    parser = _Parser(
        prog="reconcile",
        description="Make PostgreSQL and the scheduler match the YAML in schedules.d/.",
    )
    parser.add_argument("--version", action="version", version=f"reconcile {__version__}")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument(
        "--dir", dest="schedules_dir", help="schedules folder (default schedules.d)"
    )
    _common(parser)
    _database(parser)
    _apply_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        # Flags repeated on a subcommand must not reset what was given before it
        # (`reconcile -o json plan`): they default to "absent", not to None.
        p = sub.add_parser(name, help=help_, description=help_, argument_default=argparse.SUPPRESS)
        _common(p)
        return p

    p = command("validate", "check the YAML offline (no database)")
    p.add_argument("dir", nargs="?", help="schedules folder")
    p = command("next", "print the next fire times of a schedule")
    p.add_argument("name")
    p.add_argument("-n", "--count", type=int, default=5, help="how many (default 5)")
    p.add_argument("--dir", dest="schedules_dir", help="schedules folder (default schedules.d)")
    command("schema", "print the JSON Schema of the documents")
    for name, help_ in (
        ("plan", "print the plan, change nothing"),
        ("apply", "apply the plan once"),
    ):
        p = command(name, help_)
        p.add_argument("--dir", dest="schedules_dir", help="schedules folder (default schedules.d)")
        _database(p)
        _apply_flags(p)
    p = command("status", "list schedules in the database, with a count of each state")
    p.add_argument("name", nargs="?")
    p.add_argument("--project", metavar="NAME", help="list only the schedules of this project")
    p.add_argument(
        "--failing", action="store_true", help="list only schedules whose last run failed"
    )
    _database(p)
    p = command("export", "write YAML for rows that exist in the database")
    p.add_argument("--out", help="folder to write into (default: print)")
    _database(p)
    p = command("run", "run one import of a schedule now")
    p.add_argument("name")
    p.add_argument("--dir", dest="schedules_dir", help="schedules folder (default schedules.d)")
    _database(p)
    p = command("sql", "run SQL against the management database (embedded included)")
    p.add_argument("-c", dest="command_text", metavar="SQL", help="the statements to run")
    p.add_argument("-f", dest="file", metavar="FILE", help="a file of statements to run")
    _database(p)
    _serve_flags(
        command("serve", "run the daemon: apply, watch, schedule and import until stopped")
    )
    p = command("history", "list a schedule's runs, newest first")
    p.add_argument("name")
    p.add_argument("--limit", type=int, default=20)
    _database(p)
    p = command("forget", "forget what a project imported: those files load again on its next run")
    p.add_argument("project")
    p.add_argument("--path", help="only files whose path matches this glob")
    _database(p)
    p = command("completion", "print a shell completion script (bash, zsh or fish)")
    _completion(p, parser, sub)
    return parser


def _completion(
    p: argparse.ArgumentParser,
    parser: argparse.ArgumentParser,
    sub: argparse._SubParsersAction[_Parser],
) -> None:
    """The shell argument, and the vocabulary of the finished parser for the script."""
    p.add_argument("shell", choices=tuple(SHELLS))
    p.set_defaults(vocabulary=_vocabulary(parser, sub))


def _flags(parser: argparse.ArgumentParser) -> tuple[Flag, ...]:
    return tuple(
        Flag(
            names=tuple(action.option_strings),
            help=action.help or "",
            takes_value=action.nargs != 0,
            choices=tuple(str(c) for c in action.choices or ()),
        )
        for action in parser._actions  # argparse lists them nowhere public
        if action.option_strings and action.help != argparse.SUPPRESS
    )


def _vocabulary(
    parser: argparse.ArgumentParser, sub: argparse._SubParsersAction[_Parser]
) -> Vocabulary:
    """What `reconcile completion` completes, read from the parser itself."""
    helps = {action.dest: action.help or "" for action in sub._choices_actions}
    commands = {}
    for name, command_parser in sub.choices.items():
        arguments = tuple(
            str(choice)
            for action in command_parser._actions
            if not action.option_strings
            for choice in action.choices or ()
        )
        commands[name] = (helps.get(name, ""), _flags(command_parser), arguments)
    return Vocabulary(flags=_flags(parser), commands=commands)


def _settings(args: argparse.Namespace) -> Settings:
    get = args.__dict__.get
    return load_settings(
        schedules_dir=get("dir") or get("schedules_dir"),
        database_url=get("database_url"),
        owner=get("owner"),
        state_dir=get("state_dir"),
        log_format=get("log_format"),
        log_level=get("log_level"),
        output=get("output"),
        color=False if get("no_color") else None,
        debug=bool(get("debug")),
        max_deletes=get("max_deletes"),
        allow_empty=bool(get("allow_empty")),
        http_address=get("http_address"),
        delete_settle_seconds=get("delete_settle_seconds"),
    )


def _check_output(command: str, output_format: str) -> None:
    commands = _SPECIAL_OUTPUTS.get(output_format)
    if commands is not None and command not in commands:
        which = " and ".join(f"`reconcile {c}`" for c in commands)
        formats = ["text", "json", *(f for f, c in _SPECIAL_OUTPUTS.items() if command in c)]
        raise UsageError(
            f"--output {output_format} is for {which}; `reconcile {command}` writes "
            f"{', '.join(formats[:-1])} or {formats[-1]}"
        )


def _arguments(command: str, args: argparse.Namespace) -> object:
    """The command's arguments as the value its function takes: the one place argparse's
    result is read for a command (its settings are read in ``_settings``).

    Subcommand flags are absent unless given (``argument_default=SUPPRESS``), hence ``get``.
    """
    get = args.__dict__.get

    def planned() -> PlanArguments:
        return PlanArguments(
            detailed_exitcode=bool(get("detailed_exitcode")),
            adopt=bool(get("adopt")),
            against=get("against"),
            plan_file=get("plan_file"),
        )

    built: dict[str, Callable[[], object]] = {
        "plan": planned,
        "apply": planned,
        "status": lambda: StatusArguments(
            name=get("name"), project=get("project"), failing=bool(get("failing"))
        ),
        "export": lambda: ExportArguments(out=get("out")),
        "run": lambda: RunArguments(name=args.name),
        "history": lambda: HistoryArguments(name=args.name, limit=args.limit),
        "next": lambda: NextArguments(name=args.name, count=args.count),
        "forget": lambda: ForgetArguments(project=args.project, path=get("path")),
        "sql": lambda: SqlArguments(statements=get("command_text"), file=get("file")),
        "completion": lambda: CompletionArguments(shell=args.shell, vocabulary=args.vocabulary),
    }
    return built.get(command, NoArguments)()


def _resolve(command: str) -> Callable[[Any, Settings], int]:
    """The command's function; each takes its own arguments type, hence ``Any`` here."""
    module, _, function = _COMMANDS[command].partition(":")
    handler: Callable[[Any, Settings], int] = getattr(importlib.import_module(module), function)
    return handler


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether ``--output json`` was asked for (the last one wins), read before argparse runs."""
    chosen = None
    for flag, value in itertools.pairwise([*argv, ""]):
        if flag in ("-o", "--output"):
            chosen = value
        elif flag.startswith(("--output=", "-o")) and flag != "-o":
            chosen = flag.removeprefix("--output=").removeprefix("-o").removeprefix("=")
    return chosen == "json"


def _tolerate_unencodable() -> None:
    """Text a terminal cannot encode (ASCII-only, LANG=C) prints as backslash escapes."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is None:  # replaced by something that is not a text file
            continue
        utf8 = str(getattr(stream, "encoding", "")).lower().replace("-", "") == "utf8"
        if getattr(stream, "errors", "strict") == "strict" or not utf8:
            reconfigure(errors="backslashreplace")


def _fail(exc: BaseException, message: str, exit_code: int, *, as_json: bool, printed: int) -> int:
    """Print the error, capped (an echo of input can be huge) and escaped for a terminal: our
    messages may span lines, the values in them (a finding's path) are escaped where built."""
    message = capped(message)
    print(f"error: {terminal(message, lines=True)}", file=sys.stderr)
    if as_json and output.documents_printed() == printed:  # stdout holds one document
        output.emit_error(exc, message, exit_code)
    return exit_code


def _started(command: str) -> None:
    """Start-up is over (the command's module is imported, logging set up): collect again, never
    walking what start-up made.

    Most objects of a short command are its modules, classes and models, made while importing
    and kept until the process ends. Collections while they are made walk them again and again,
    and CPython's exit walks them all once more while it tears the modules down: some 60 ms of
    `reconcile run`'s 0.32 s. Frozen (``gc.freeze``), they are left out of every later walk. The
    daemon runs for days: what start-up made and dropped is collected before the rest is frozen.
    """
    if command == "serve":
        gc.collect()
    gc.freeze()
    gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (the console script exits with it).

    Errors print ``error: ...`` on stderr and, with ``--output json``, an ``Error`` document on
    stdout unless the command already printed its own document there. Without ``argv`` this is
    the program itself, ending when this returns: the collector waits until start-up is over
    (``_started``), and what the command leaves is not walked at exit either.
    """
    whole_process = argv is None
    if whole_process:
        gc.disable()
    try:
        return _main(sys.argv[1:] if argv is None else list(argv), whole_process=whole_process)
    finally:
        if whole_process:
            gc.freeze()


def _main(argv: list[str], *, whole_process: bool) -> int:
    _tolerate_unencodable()
    as_json = _wants_json(argv)
    debug = "--debug" in argv
    printed = output.documents_printed()
    try:
        args = build_parser().parse_args(argv)
        command = args.command or ("plan" if args.dry_run else "apply")
        settings = _settings(args)
        _check_output(command, settings.output)
        if command not in _SILENT:
            from reconciler import logs

            logs.configure(
                log_format=settings.log_format, level=settings.log_level, color=settings.color
            )
        if command not in _OFFLINE:
            from reconciler.store.connecting import set_role

            set_role(command)  # pg_stat_activity shows reconcile/<command>/<host:pid>
        arguments = _arguments(command, args)
        handler = _resolve(command)
        if whole_process:
            _started(command)
        return handler(arguments, settings)
    except ReconcileError as exc:
        if debug:
            raise
        return _fail(exc, exc.message, exc.exit_code, as_json=as_json, printed=printed)
    except KeyboardInterrupt as exc:
        return _fail(exc, "interrupted", 130, as_json=as_json, printed=printed)
    except Terminated as exc:
        return _fail(exc, f"interrupted by {exc}", exc.exit_code, as_json=as_json, printed=printed)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): nothing left to say
        return EXIT_ERROR
    except OSError as exc:
        if debug:
            raise
        return _fail(exc, str(exc), EXIT_ERROR, as_json=as_json, printed=printed)
