"""The oldest PostgreSQL we support (15), started for the import tests beside the embedded one.

Import behaviour differs between server versions (PostgreSQL 15 to 17 end CSV data at a ``\\.``
line, 18 does not), so the import tests run on both. The server comes from Debian's
``postgresql-15`` package (``.ci/install-system-deps`` installs it); it runs from a temporary data
folder on a free loopback port, as the ``postgres`` system user when the tests run as root.
Without it the tests for version 15 skip, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["BIN", "oldest_postgres"]

BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str], user: str | None) -> None:
    done = subprocess.run(args, user=user, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")


@pytest.fixture(scope="session")
def oldest_postgres() -> Iterator[str]:
    """A superuser URL of a running PostgreSQL 15 server for the whole test session."""
    if not (BIN / "postgres").exists():
        reason = f"PostgreSQL 15 is not installed ({BIN}); run .ci/install-system-deps"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    user = "postgres" if os.geteuid() == 0 else None
    # Not under pytest's temporary folder: that is private to its owner, and the server may run
    # as another user.
    home = Path(tempfile.mkdtemp(prefix="reconcile-pg15-"))
    data = home / "data"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    _run(
        [str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"], user
    )
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run(
        [
            str(BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(home / "log"),
            "-w",
            "start",
        ],
        user,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _run([str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], user)
        shutil.rmtree(home, ignore_errors=True)
