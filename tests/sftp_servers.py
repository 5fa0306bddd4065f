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

asyncssh also plays the servers met in the field that misbehave on purpose: one that closes a
connection idle for ``IDLE_SECONDS`` (``idle_sftp_server``: keepalives do not count, only SFTP
requests), one without posix-rename whose RENAME refuses an existing target as SFTP v3 says
(``plain_rename_server``), and one that changes a file under a client once, right as it answers
the folder's listing, a STAT or the first READ (``hooked_sftp_server`` and ``SftpServer.arm``:
``rewrite_in_place`` rewrites it with the same size, ``fifo_in_place`` puts a FIFO there).
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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncssh
import pytest

__all__ = [
    "IDLE_SECONDS",
    "SSHD",
    "Hook",
    "SftpServer",
    "asyncssh_server",
    "fifo_in_place",
    "hooked_sftp_server",
    "idle_sftp_server",
    "known_hosts_line",
    "openssh_server",
    "plain_rename_server",
    "rewrite_in_place",
    "sftp_server",
    "start_asyncssh",
    "start_openssh",
    "write_key_pair",
]

SSHD = "/usr/sbin/sshd"
PASSWORD = "s3cret-Pa55word"
IDLE_SECONDS = 3.0
_USER = "importer"
Request = Literal["readdir", "stat", "read"]


def rewrite_in_place(path: Path) -> None:
    """Rewrite ``path`` in place (the same file, as an open handle sees it): the same size, every
    digit 1 a 7, its mtime 5 s later."""
    before = path.stat()
    with path.open("r+b") as f:
        f.write(path.read_bytes().replace(b"1", b"7"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))


def fifo_in_place(path: Path) -> None:
    """Put a FIFO that nobody writes to where ``path`` was."""
    path.unlink()
    os.mkfifo(path)


@dataclass(frozen=True)
class Hook:
    """``action(path)`` once, as the server answers ``request`` for ``path`` (for ``readdir``:
    the listing of its folder), before the answer leaves: the client holds what was before."""

    request: Request
    path: Path
    action: Callable[[Path], None]


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
    hooks: list[Hook] | None = None  # armed and not yet run; None: this server runs none

    def arm(
        self, request: Request, path: Path, action: Callable[[Path], None] = rewrite_in_place
    ) -> None:
        """Run ``action(path)`` once, as this server answers ``request`` for ``path``."""
        if self.hooks is None:
            raise RuntimeError(f"the {self.kind} server runs no hooks: use hooked_sftp_server")
        self.hooks.append(Hook(request, path, action))

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
    idle_seconds: float | None = None  # close a connection without SFTP requests this long

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self.connections.add(conn)
        self.touch()
        if self.idle_seconds is not None:
            self._watch = asyncio.get_running_loop().create_task(self._close_when_idle())

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self._conn)
        if self.idle_seconds is not None:
            self._watch.cancel()

    def touch(self) -> None:
        """An SFTP request came: the connection is not idle (keepalives never get here)."""
        self._active_at = time.monotonic()

    async def _close_when_idle(self) -> None:
        assert self.idle_seconds is not None
        while time.monotonic() - self._active_at < self.idle_seconds:
            await asyncio.sleep(0.05)
        self._conn.close()

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == _USER and password == PASSWORD


class _SftpFiles(asyncssh.SFTPServer):
    """asyncssh's SFTP server on the real file system, as each server variant asks (class
    attributes set per server): every request marks its connection active; posix-rename may be
    refused; armed hooks run as their request is answered."""

    posix_rename_supported = True
    hooks: list[Hook] | None = None

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        super().__init__(chan)
        owner = self.connection.get_owner()
        assert isinstance(owner, _PasswordServer)
        self._owner = owner
        owner.touch()
        self._unread: dict[int, Path] = {}  # open files not read yet, for hooks on READ

    def _done(self, request: Request, path: bytes | Path, *, folder: bool = False) -> None:
        if not self.hooks:
            return
        path = Path(os.fsdecode(path))
        for hook in list(self.hooks):
            if hook.request == request and (hook.path.parent if folder else hook.path) == path:
                self.hooks.remove(hook)
                hook.action(hook.path)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        async for name in super().scandir(path):
            self._owner.touch()
            yield name
        self._done("readdir", path, folder=True)

    def realpath(self, path: bytes) -> Any:
        self._owner.touch()
        return super().realpath(path)

    def stat(self, path: bytes) -> Any:
        self._owner.touch()
        attrs = super().stat(path)
        self._done("stat", path)
        return attrs

    def lstat(self, path: bytes) -> Any:
        self._owner.touch()
        return super().lstat(path)

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> Any:
        self._owner.touch()
        file_obj = super().open(path, pflags, attrs)
        if self.hooks is not None:
            self._unread[id(file_obj)] = Path(os.fsdecode(path))
        return file_obj

    def read(self, file_obj: object, offset: int, size: int) -> Any:
        self._owner.touch()
        data = super().read(file_obj, offset, size)
        path = self._unread.pop(id(file_obj), None)
        if path is not None:
            self._done("read", path)
        return data

    def fstat(self, file_obj: object) -> Any:
        self._owner.touch()
        return super().fstat(file_obj)

    def close(self, file_obj: object) -> Any:
        self._owner.touch()
        self._unread.pop(id(file_obj), None)
        return super().close(file_obj)

    def remove(self, path: bytes) -> Any:
        self._owner.touch()
        return super().remove(path)

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> Any:
        self._owner.touch()
        return super().mkdir(path, attrs)

    def rename(self, oldpath: bytes, newpath: bytes) -> Any:
        self._owner.touch()
        return super().rename(oldpath, newpath)  # refuses an existing target, as SFTP v3 says

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> Any:
        self._owner.touch()
        if not self.posix_rename_supported:
            # asyncssh announces the extension to every client: refusing it is what a client
            # that sends it anyway meets on a server without it.
            raise asyncssh.SFTPOpUnsupported("posix-rename@openssh.com is not supported")
        return super().posix_rename(oldpath, newpath)


@contextlib.contextmanager
def start_asyncssh(
    workdir: Path,
    *,
    idle_seconds: float | None = None,
    posix_rename: bool = True,
    hooks: bool = False,
) -> Iterator[SftpServer]:
    """Run asyncssh's SFTP server in a background event loop; password and key auth. It closes a
    connection idle for ``idle_seconds``, refuses posix-rename unless ``posix_rename``, and with
    ``hooks`` runs those that ``SftpServer.arm`` sets."""
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "asyncssh_host_key"
    host_public = write_key_pair(host_key)
    ecdsa_key = workdir / "asyncssh_host_ecdsa_key"
    ecdsa_public = write_key_pair(ecdsa_key, "ecdsa-sha2-nistp256")
    client_key = workdir / "client_key"
    authorized = workdir / "authorized_keys"
    authorized.write_text(write_key_pair(client_key) + "\n")
    connections: set[asyncssh.SSHServerConnection] = set()
    server_class = type(
        "_Server", (_PasswordServer,), {"connections": connections, "idle_seconds": idle_seconds}
    )
    armed: list[Hook] | None = [] if hooks else None
    files_class = type(
        "_Files", (_SftpFiles,), {"posix_rename_supported": posix_rename, "hooks": armed}
    )
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
            sftp_factory=files_class,
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
            hooks=armed,
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
def idle_sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """asyncssh closing any connection without an SFTP request for ``IDLE_SECONDS``."""
    with start_asyncssh(tmp_path_factory.mktemp("idle"), idle_seconds=IDLE_SECONDS) as server:
        yield server


@pytest.fixture(scope="session")
def plain_rename_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """asyncssh without posix-rename: only the plain RENAME, which refuses an existing target."""
    with start_asyncssh(tmp_path_factory.mktemp("plain_rename"), posix_rename=False) as server:
        yield server


@pytest.fixture(scope="session")
def hooked_sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    """asyncssh running the hooks a test arms (``SftpServer.arm``) on files of its own folder."""
    with start_asyncssh(tmp_path_factory.mktemp("hooked"), hooks=True) as server:
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
