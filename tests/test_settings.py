"""Settings: flag, then RECONCILER_* variable, then default; a bad value is one usage error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Cli

from reconciler.errors import UsageError
from reconciler.settings import MAX_IMPORT_WORKERS, load_settings

W = "RECONCILER_IMPORT_WORKERS"
A = "RECONCILER_HTTP_ADDRESS"
S = "RECONCILER_DELETE_SETTLE_SECONDS"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({W: "abc"}, f"{W}='abc' is not a whole number"),
        ({W: "2.5"}, f"{W}='2.5' is not a whole number"),
        ({W: "0"}, f"{W}='0' is out of range: give 1 to 64"),
        ({W: "-3"}, f"{W}='-3' is out of range"),
        ({W: "1000000"}, f"{W}='1000000' is out of range"),
        ({"RECONCILER_LOG_LEVEL": "loud"}, "RECONCILER_LOG_LEVEL='loud' is not one of: debug,"),
        ({"RECONCILER_LOG_FORMAT": "xml"}, "RECONCILER_LOG_FORMAT='xml' is not one of: json,"),
        ({A: "8080"}, f"{A}='8080' is not host:port"),
        ({A: ":8080"}, "is not host:port"),
        ({A: "0.0.0.0:http"}, "is not host:port"),
        ({A: "0.0.0.0:65536"}, "is not host:port"),
        ({A: "::1:8080"}, "is not host:port"),
        ({A: "bad_host!:8080"}, "is not host:port"),
        ({"RECONCILER_OWNER": " team-a"}, "RECONCILER_OWNER=' team-a' is not an owner id"),
        ({"RECONCILER_OWNER": "x" * 201}, "is not an owner id"),
        ({"RECONCILER_API_KEY": "k3y-from-a-file\n"}, "RECONCILER_API_KEY must be visible ASCII"),
        ({"RECONCILER_WEBHOOK_SECRET": "whsec_not base64!"}, "the rest is not base64"),
        ({"RECONCILER_WEBHOOK_SECRET": "\tsecret"}, "RECONCILER_WEBHOOK_SECRET must be visible"),
        ({S: "soon"}, f"{S}='soon' is not a whole number"),
        ({S: "-1"}, f"{S}='-1' is out of range: give 0 to 86400"),
    ],
)
def test_a_bad_variable_is_a_usage_error_naming_it(given: dict[str, str], message: str) -> None:
    """Each RECONCILER_* variable is checked; the message names it and what would be valid."""
    with pytest.raises(UsageError) as caught:
        load_settings(environ=given)
    assert message in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"log_level": "loud"}, "--log-level 'loud' is not one of"),
        ({"log_format": "xml"}, "--log-format 'xml' is not one of"),
        ({"max_deletes": -1}, "--max-deletes '-1' is out of range"),
        ({"owner": ""}, "--owner '' is not an owner id"),
        ({"import_workers": 0}, "import_workers='0' is out of range: give 1 to"),
        ({"http_address": "localhost"}, "--http-address 'localhost' is not host:port"),
        ({"delete_settle_seconds": 86401}, "--delete-settle-seconds '86401' is out of range"),
    ],
)
def test_a_bad_flag_is_a_usage_error_naming_it(flags: dict[str, Any], message: str) -> None:
    """A flag's value is checked like its variable, and named as the flag."""
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(")):
        load_settings(environ={}, **flags)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("RECONCILER_API_KEY", "k3y-from-a-file\n"),
        ("RECONCILER_API_KEY", "  padded-secret  "),
        ("RECONCILER_WEBHOOK_SECRET", "whsec_not base64!"),
        ("RECONCILER_WEBHOOK_SECRET", "signing-key\r\n"),
    ],
)
def test_a_bad_secret_is_never_repeated(name: str, secret: str) -> None:
    """The message about a malformed key names the variable, not the value."""
    with pytest.raises(UsageError) as caught:
        load_settings(environ={name: secret})
    assert name in caught.value.message
    assert secret.strip() not in caught.value.message


@pytest.mark.parametrize(
    ("given", "field", "value"),
    [
        ({"RECONCILER_IMPORT_WORKERS": " 4 "}, "import_workers", 4),
        ({"RECONCILER_IMPORT_WORKERS": str(MAX_IMPORT_WORKERS)}, "import_workers", 64),
        ({"RECONCILER_LOG_LEVEL": "WARNING"}, "log_level", "warning"),
        ({"RECONCILER_LOG_FORMAT": "Console"}, "log_format", "console"),
        ({"RECONCILER_HTTP_ADDRESS": "0.0.0.0:8080"}, "http_address", "0.0.0.0:8080"),
        ({"RECONCILER_HTTP_ADDRESS": "[::]:8080"}, "http_address", "[::]:8080"),
        ({"RECONCILER_HTTP_ADDRESS": "api.internal:0"}, "http_address", "api.internal:0"),
        ({"RECONCILER_OWNER": "team-b"}, "owner", "team-b"),
        ({"RECONCILER_API_KEY": "s3cret-key with space"}, "api_key", "s3cret-key with space"),
        ({"RECONCILER_WEBHOOK_SECRET": "whsec_c2VjcmV0"}, "webhook_secret", "whsec_c2VjcmV0"),
        ({"RECONCILER_API_KEY": ""}, "api_key", None),
        ({}, "import_workers", 2),
        ({}, "http_address", "127.0.0.1:8080"),
        ({S: "3"}, "delete_settle_seconds", 3),
        ({S: "0"}, "delete_settle_seconds", 0),
        ({}, "delete_settle_seconds", 10),
    ],
)
def test_good_values_and_defaults(given: dict[str, str], field: str, value: object) -> None:
    """Valid values are taken (case and padding of words and numbers forgiven), else defaults."""
    assert getattr(load_settings(environ=given), field) == value


def test_the_flag_wins_over_the_variable() -> None:
    """A flag beats its variable, even when the variable's value is bad."""
    settings = load_settings(log_level="debug", environ={"RECONCILER_LOG_LEVEL": "loud"})
    assert settings.log_level == "debug"
    settings = load_settings(delete_settle_seconds=2, environ={S: "soon"})
    assert settings.delete_settle_seconds == 2


@pytest.mark.parametrize(
    ("env", "args", "line"),
    [
        ({"RECONCILER_IMPORT_WORKERS": "abc"}, ["run", "x"], "RECONCILER_IMPORT_WORKERS='abc'"),
        ({"RECONCILER_IMPORT_WORKERS": "0"}, ["status"], "RECONCILER_IMPORT_WORKERS='0'"),
        ({"RECONCILER_LOG_LEVEL": "loud"}, ["plan"], "RECONCILER_LOG_LEVEL='loud'"),
        ({"RECONCILER_HTTP_ADDRESS": "8080"}, ["status"], "RECONCILER_HTTP_ADDRESS='8080'"),
        ({}, ["plan", "--max-deletes", "many"], "argument --max-deletes: invalid int value"),
        ({}, ["plan", "--max-deletes", "-5"], "--max-deletes '-5' is out of range"),
        ({}, ["serve", "--delete-settle-seconds", "-1"], "--delete-settle-seconds '-1' is out"),
        ({S: "1h"}, ["serve"], "RECONCILER_DELETE_SETTLE_SECONDS='1h' is not a whole number"),
    ],
)
def test_the_cli_prints_one_error_line_and_exits_one(
    cli: Cli, env: dict[str, str], args: list[str], line: str
) -> None:
    """A bad setting or flag: exit 1 (never argparse's 2, which means changes), one line."""
    done = cli(*args, env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (error,) = done.stderr.splitlines()
    assert error.startswith("error: ")
    assert line in error


def test_no_home_folder_asks_for_a_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HOME or XDG_STATE_HOME (an arbitrary container uid), the fix is named."""

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.raises(UsageError, match="set RECONCILER_STATE_DIR"):
        load_settings(environ={})
    assert load_settings(environ={"RECONCILER_STATE_DIR": "/tmp/x"}).state_dir == Path("/tmp/x")
