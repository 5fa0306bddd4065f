"""Real SFTP servers on loopback for the source tests and the SFTP benchmark.

Two independent peers: OpenSSH's ``sshd`` (the server people run in production; key auth as the
current user) and asyncssh's SFTP server (password and key auth, always available because asyncssh
is a test dependency). Each has two host keys, as real servers do: an ed25519 key, which its
known_hosts file lists, and another (``other_host_key``: RSA for sshd, ECDSA for asyncssh).
``start_openssh`` and ``start_asyncssh`` are plain context managers, so
``benchmarks/bench_sftp.py`` can use them too; ``tests/conftest.py`` loads this module as a pytest
plugin for the fixtures ``sftp_server`` (parametrized over both), ``asyncssh_server`` and
``openssh_server``. Both serve the real file system: a remote path is the absolute local path, and
each test works in its own folder (``SftpServer.folder``).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

__all__ = [
    "SSHD",
    "SftpServer",
    "asyncssh_server",
    "known_hosts_line",
    "openssh_server",
    "sftp_server",
    "start_asyncssh",
    "start_openssh",
    "write_key_pair",
]

SSHD = "/usr/sbin/sshd"
PASSWORD = "s3cret-Pa55word"
_USER = "importer"


@dataclass(frozen=True)
class SftpServer:
    """A running SFTP server and what a client needs to reach it."""

    kind: str
    host: str
    port: int
    username: str
    password: str | None  # None: this server accepts keys only
    client_key: Path  # a private key the server accepts
    host_public_key: str  # "ssh-ed25519 AAAA..."
    known_hosts: Path  # a known_hosts file listing host_public_key for host:port
    workdir: Path
    other_host_key: str  # the server's second host key, which known_hosts does not list

    def folder(self) -> Path:
        """A fresh, empty folder on the server for one test."""
        path = self.workdir / "files" / uuid.uuid4().hex[:10]
        path.mkdir(parents=True)
        return path

    def sftp_fields(self, remote_dir: Path, **fields: Any) -> dict[str, Any]:
        """Keyword arguments for ``Sftp(...)`` that reach this server with its client key."""
        base: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "private_key_file": str(self.client_key),
            "known_hosts_file": str(self.known_hosts),
            "remote_dir": str(remote_dir),
        }
        base.update(fields)
        return base


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """A known_hosts line in OpenSSH's syntax: ``[host]:port`` unless the port is 22."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {public_key}\n"


def write_key_pair(path: Path, algorithm: str = "ssh-ed25519") -> str:
    """Write a new private key (OpenSSH format, mode 0600) to ``path``; its public line."""
    key = asyncssh.generate_private_key(algorithm)
    key.write_private_key(str(path))
    path.chmod(0o600)
    public: bytes = key.export_public_key("openssh")
    return public.decode().strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_banner(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"sshd exited with {proc.returncode}: {err.strip()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            if s.recv(8).startswith(b"SSH-"):
                return
        time.sleep(0.02)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} in time")


@contextlib.contextmanager
def start_openssh(workdir: Path) -> Iterator[SftpServer]:
    """Run ``sshd -D -e`` on a free loopback port with its own host key; key auth as this user."""
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "ssh_host_ed25519_key"
    host_public = write_key_pair(host_key)
    rsa_key = workdir / "ssh_host_rsa_key"
    rsa_public = write_key_pair(rsa_key, "ssh-rsa")
    client_key = workdir / "client_key"
    (workdir / "authorized_keys").write_text(write_key_pair(client_key) + "\n")
    port = _free_port()
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nHostKey {rsa_key}\n"
        f"PidFile {workdir / 'sshd.pid'}\nAuthorizedKeysFile {workdir / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for_banner(port, proc, time.monotonic() + 10)
        known_hosts = workdir / "known_hosts"
        known_hosts.write_text(known_hosts_line("127.0.0.1", port, host_public))
        yield SftpServer(
            kind="openssh",
            host="127.0.0.1",
            port=port,
            username=getpass.getuser(),
            password=None,
            client_key=client_key,
            host_public_key=host_public,
            known_hosts=known_hosts,
            workdir=workdir,
            other_host_key=rsa_public,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


class _PasswordServer(asyncssh.SSHServer):
    connections: set[asyncssh.SSHServerConnection]  # set per server, to close them on stop

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self._conn)

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == _USER and password == PASSWORD


@contextlib.contextmanager
def start_asyncssh(workdir: Path) -> Iterator[SftpServer]:
    """Run asyncssh's SFTP server in a background event loop; password and key auth."""
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "asyncssh_host_key"
    host_public = write_key_pair(host_key)
    ecdsa_key = workdir / "asyncssh_host_ecdsa_key"
    ecdsa_public = write_key_pair(ecdsa_key, "ecdsa-sha2-nistp256")
    client_key = workdir / "client_key"
    authorized = workdir / "authorized_keys"
    authorized.write_text(write_key_pair(client_key) + "\n")
    connections: set[asyncssh.SSHServerConnection] = set()
    server_class = type("_Server", (_PasswordServer,), {"connections": connections})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="asyncssh-server", daemon=True)
    thread.start()

    async def _listen() -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            "127.0.0.1",
            0,
            server_factory=server_class,
            server_host_keys=[str(host_key), str(ecdsa_key)],
            authorized_client_keys=str(authorized),
            sftp_factory=True,
        )

    acceptor = asyncio.run_coroutine_threadsafe(_listen(), loop).result(10)
    try:
        port: int = acceptor.sockets[0].getsockname()[1]
        known_hosts = workdir / "known_hosts"
        known_hosts.write_text(known_hosts_line("127.0.0.1", port, host_public))
        yield SftpServer(
            kind="asyncssh",
            host="127.0.0.1",
            port=port,
            username=_USER,
            password=PASSWORD,
            client_key=client_key,
            host_public_key=host_public,
            known_hosts=known_hosts,
            workdir=workdir,
            other_host_key=ecdsa_public,
        )
    finally:

        async def _stop() -> None:
            acceptor.close()
            await acceptor.wait_closed()
            for conn in list(connections):
                conn.close()
                await conn.wait_closed()
            # let the per-connection SFTP tasks see their channels close before the loop stops
            pending = asyncio.all_tasks() - {asyncio.current_task()}
            await asyncio.wait(pending, timeout=5) if pending else None

        asyncio.run_coroutine_threadsafe(_stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="session")
def asyncssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """asyncssh's SFTP server for the whole session (password ``PASSWORD`` or the client key)."""
    with start_asyncssh(tmp_path_factory.mktemp("asyncssh")) as server:
        yield server


@pytest.fixture(scope="session")
def openssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """OpenSSH's sshd for the whole session; skips when sshd is not installed."""
    if not shutil.which(SSHD):
        pytest.skip(f"{SSHD} not installed: run .ci/install-system-deps (package openssh-server)")
    with start_openssh(tmp_path_factory.mktemp("openssh")) as server:
        yield server


@pytest.fixture(params=["asyncssh", "openssh"])
def sftp_server(request: pytest.FixtureRequest) -> SftpServer:
    """Each real SFTP server in turn, for contract tests that must hold against both."""
    server: SftpServer = request.getfixturevalue(f"{request.param}_server")
    return server
