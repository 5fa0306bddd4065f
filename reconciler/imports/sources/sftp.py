"""The SFTP source (paramiko): verified host keys, fast bounded streaming, after-import actions.

Registered for ``Sftp`` with ``imports.sources``: an ``SftpSource`` for one run; the import
engine lists, opens (from several threads at once) and finishes files through it. Every paramiko,
socket and OS error is translated here into a one-line ``SourceError`` or ``HostKeyError`` that
names the server and never the password.

Host keys are always verified, against known_hosts as OpenSSH reads it
(``imports.sources.known_hosts``).

Speed with flat memory: paramiko's plain ``read`` waits for each 32 KiB reply (about 5 MB/s), and
its ``prefetch`` queues a READ for every 32 KiB of the file up front from a helper thread. So the
connection uses our own socket with TCP_NODELAY, a larger SSH window and packet size, AES-GCM
first (paramiko's cheapest cipher by far: no separate MAC), and each open file streams through
``PipelinedReader`` (``imports.sources.pipelining``): a fixed window of outstanding READ requests.
``benchmarks/bench_sftp.py`` measures it against OpenSSH's ``sftp``.
"""

from __future__ import annotations

import errno
import functools
import posixpath
import socket
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR

from reconciler import logs
from reconciler.errors import HostKeyError, ReconcileError, SourceError
from reconciler.imports import secrets
from reconciler.imports.sources import implementation_for
from reconciler.imports.sources.known_hosts import keyscan, load_policy
from reconciler.imports.sources.pipelining import REQUEST_SIZE, PipelinedReader
from reconciler.model.files import Opened, SourceFile
from reconciler.model.specs import Sftp

if TYPE_CHECKING:
    from reconciler.settings import Settings

__all__ = ["SftpSource"]

# Per channel: what the server may send before we read it. Above the reader's 8 MB of requests in
# flight, so that the window never holds replies back on a long-distance link.
WINDOW_SIZE = 16 * 1024 * 1024
MAX_PACKET_SIZE = 256 * 1024
_FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_KEEPALIVE_SECONDS = 30
_ATTRIBUTES: Any = paramiko.SFTPAttributes
_log = logs.get_logger(__name__)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _first(preferred: Sequence[str], offered: Sequence[str]) -> tuple[str, ...]:
    """``offered`` with those of ``preferred`` it holds moved to the front, in that order."""
    ours = tuple(dict.fromkeys(p for p in preferred if p in offered))
    return ours + tuple(o for o in offered if o not in ours)


def _transport(
    sock: Any,
    /,
    *,
    host_key_types: Sequence[str] = (),
    disabled_algorithms: Mapping[str, Iterable[str]] | None = None,
    gss_kex: bool = False,  # passed by paramiko < 4 (GSS-API, which reconcile does not use)
    gss_deleg_creds: bool = False,
) -> paramiko.Transport:
    transport = paramiko.Transport(
        sock,
        default_window_size=WINDOW_SIZE,
        default_max_packet_size=MAX_PACKET_SIZE,
        disabled_algorithms=disabled_algorithms,
    )
    options = transport.get_security_options()
    options.ciphers = _first(_FAST_CIPHERS, options.ciphers)
    # Ask for the key types known_hosts holds for this server, so that a server with several host
    # keys shows the one we can verify (OpenSSH orders its HostKeyAlgorithms the same way).
    options.key_types = _first(host_key_types, options.key_types)
    return transport


def _mtime(attrs: paramiko.SFTPAttributes) -> datetime:
    return datetime.fromtimestamp(attrs.st_mtime or 0, UTC)


class _RemoteFile:
    """An open remote file: its bytes through the pipelined reader, ``stat`` through FSTAT on
    its handle (once every READ reply is in: the session serves one request at a time)."""

    def __init__(
        self, source: SftpSource, reader: PipelinedReader, handle: paramiko.SFTPFile, path: str
    ) -> None:
        self._source, self._reader, self._handle, self._path = source, reader, handle, path
        self.read = reader.read

    def stat(self) -> tuple[int, datetime]:
        while not self._reader.at_end and self._reader.read(REQUEST_SIZE):
            pass  # the file grew past what was read: drain, so the session is free for FSTAT
        try:
            attrs = self._handle.stat()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._source._error(exc, "file", self._path) from exc
        return attrs.st_size or 0, _mtime(attrs)


class SftpSource:
    """One SSH connection: listing and after-import on one SFTP session, one session per stream."""

    def __init__(
        self,
        config: Sftp,
        *,
        environ: Mapping[str, str],
        connect_timeout: float = 10,
        read_timeout: float = 60,
    ) -> None:
        self.config = config
        self.key = f"sftp://{config.username}@{config.host}:{config.port}"
        self._address = f"{config.host}:{config.port}"
        self._read_timeout = read_timeout
        self._password = secrets.resolve(
            config.password, environ=environ, where=f"{self.key} password"
        )
        self._lock = threading.Lock()  # guards the listing session: paramiko's is not thread-safe
        self._client = self._connect(connect_timeout)
        try:
            transport = self._client.get_transport()
            assert transport is not None  # connect() succeeded
            self._transport = transport
            self._sftp = self._session()
            self._folder = self._call(self._sftp.normalize, config.remote_dir, what="remote_dir")
        except BaseException:
            self._client.close()
            raise
        _log.debug(
            "sftp connected",
            source=self.key,
            cipher=getattr(transport, "remote_cipher", None),
            folder=self._folder,
        )

    # -- connecting ---------------------------------------------------------------------------

    def _connect(self, timeout: float) -> paramiko.SSHClient:
        config = self.config
        known_hosts = Path(config.known_hosts_file or "~/.ssh/known_hosts").expanduser()
        if not known_hosts.is_file():
            raise HostKeyError(
                f"known_hosts file {known_hosts} does not exist: host keys are always verified; "
                f"create it with {keyscan(config.host, config.port, known_hosts)} after checking "
                "the fingerprint, or set sftp.known_hosts_file"
            )
        pkey = self._private_key()
        if pkey is None and self._password is None:
            raise SourceError(f"{self.key}: give sftp.password or sftp.private_key_file")
        policy = load_policy(known_hosts, config.host, config.port)
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(policy)
        sock = self._socket(timeout)
        try:
            client.connect(
                config.host,
                config.port,
                username=config.username,
                password=self._password,
                pkey=pkey,
                sock=sock,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
                transport_factory=functools.partial(_transport, host_key_types=policy.key_types()),
            )
        except BaseException as exc:
            client.close()
            sock.close()
            if isinstance(exc, ReconcileError) or not isinstance(exc, Exception):
                raise  # our HostKeyError from the policy, or an interrupt
            raise self._connect_error(exc) from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(_KEEPALIVE_SECONDS)
        return client

    def _private_key(self) -> paramiko.PKey | None:
        path = self.config.private_key_file
        if path is None:
            return None
        try:
            return paramiko.PKey.from_path(Path(path).expanduser())
        except paramiko.PasswordRequiredException as exc:
            raise SourceError(
                f"private key {path} is encrypted; reconcile needs a key without a passphrase "
                "(mount it as a secret file readable only by this process)"
            ) from exc
        except (OSError, paramiko.SSHException, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
            raise SourceError(f"cannot load private key {path}: {reason}") from exc

    def _socket(self, timeout: float) -> socket.socket:
        try:
            sock = socket.create_connection((self.config.host, self.config.port), timeout=timeout)
        except socket.gaierror as exc:
            raise SourceError(f"cannot resolve host {self.config.host}: {exc.strerror}") from exc
        except TimeoutError as exc:
            raise SourceError(
                f"cannot connect to {self._address}: no answer within {timeout:g} s"
            ) from exc
        except OSError as exc:
            reason = (exc.strerror or _one_line(exc)).lower()
            raise SourceError(f"cannot connect to {self._address}: {reason}") from exc
        # SFTP is a request/response protocol: Nagle's algorithm would hold back small requests.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _connect_error(self, exc: Exception) -> SourceError:
        if isinstance(exc, paramiko.AuthenticationException):
            return SourceError(
                f"authentication failed for user {self.config.username} on {self._address}: "
                "check the password/private key"
            )
        if isinstance(exc, TimeoutError):
            return SourceError(f"SSH handshake with {self._address} timed out")
        return SourceError(f"SSH connection to {self._address} failed: {self._clean(exc)}")

    def _clean(self, exc: BaseException) -> str:
        text = _one_line(exc)
        return text.replace(self._password, logs.MASK) if self._password else text

    # -- sessions and error translation -------------------------------------------------------

    def _session(self) -> paramiko.SFTPClient:
        try:
            sftp = paramiko.SFTPClient.from_transport(
                self._transport, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE
            )
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SourceError(
                f"{self.key}: cannot start an SFTP session: {self._clean(exc)}"
            ) from exc
        if sftp is None:
            raise SourceError(f"{self.key}: the server refused an SFTP session")
        sftp.get_channel().settimeout(self._read_timeout)  # type: ignore[union-attr]
        return sftp

    def _error(self, exc: BaseException, what: str, path: str) -> SourceError:
        code = exc.errno if isinstance(exc, OSError) else None
        if code == errno.ENOENT:
            reason = "does not exist"
        elif code == errno.EACCES:
            reason = "permission denied"
        elif isinstance(exc, TimeoutError):
            reason = f"no answer from the server for {self._read_timeout:g} s"
        elif isinstance(exc, EOFError | paramiko.SSHException) and not self._transport.is_active():
            reason = "the connection was lost"
        else:
            reason = self._clean(exc)
        return SourceError(f"{self.key}: {what} {path}: {reason}")

    def _call(self, fn: Any, *args: Any, what: str) -> Any:
        try:
            return fn(*args)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._error(exc, what, str(args[0])) from exc

    # -- the Source protocol ------------------------------------------------------------------

    def _read_folder(self, folder: str) -> list[tuple[bytes, paramiko.SFTPAttributes]]:
        """Every entry of ``folder`` but '.' and '..', with its name as the server sent it.

        paramiko's ``listdir_attr`` decodes every name as UTF-8 and fails the whole listing on the
        first that is not (leaving the folder's handle open); this is the same OPENDIR, READDIR
        and CLOSE exchange through paramiko's request method, reading names as bytes."""
        session: Any = self._sftp  # ``_request`` and ``_from_msg`` are paramiko internals
        kind, reply = session._request(CMD_OPENDIR, folder)
        if kind != CMD_HANDLE:
            raise OSError("the server answered OPENDIR without a handle")
        handle = reply.get_binary()
        entries: list[tuple[bytes, paramiko.SFTPAttributes]] = []
        try:
            while True:
                try:
                    kind, reply = session._request(CMD_READDIR, handle)
                except EOFError:  # the end of the folder
                    return entries
                if kind != CMD_NAME:
                    raise OSError("the server answered READDIR without names")
                for _ in range(reply.get_int()):
                    name = reply.get_string()
                    reply.get_string()  # the `ls -l` line: unused, and no more UTF-8 than the name
                    attrs = _ATTRIBUTES._from_msg(reply)
                    if name not in (b".", b".."):
                        entries.append((name, attrs))
        finally:
            with suppress(OSError, EOFError, paramiko.SSHException):
                session._request(CMD_CLOSE, handle)

    def list_files(self) -> list[SourceFile]:
        """Regular files in ``remote_dir`` matching ``pattern`` (as a shell would: hidden files
        only when the pattern starts with '.'), sorted by name. A name that is not UTF-8 cannot
        be matched, recorded or shown faithfully: it is skipped with a warning."""
        pattern = self.config.pattern
        with self._lock:
            entries = self._call(self._read_folder, self._folder, what="remote_dir")
            files = []
            for raw, entry in entries:
                try:
                    name = raw.decode()
                except UnicodeDecodeError:
                    _log.warning(
                        "file skipped: its name is not UTF-8 (rename it to import it)",
                        source=self.key,
                        folder=self._folder,
                        name=raw.decode(errors="backslashreplace"),
                    )
                    continue
                hidden = name.startswith(".") and not pattern.startswith(".")
                if hidden or not fnmatchcase(name, pattern):
                    continue
                path = posixpath.join(self._folder, name)
                attrs = entry
                if stat.S_ISLNK(entry.st_mode or 0):  # a link to a file is imported as the file
                    attrs = self._call(self._sftp.stat, path, what="file")
                if not stat.S_ISREG(attrs.st_mode or 0):
                    continue
                files.append(SourceFile(path, name, attrs.st_size or 0, _mtime(attrs)))
        return sorted(files, key=lambda f: f.name)

    @contextmanager
    def _open(self, f: SourceFile) -> Iterator[Opened]:
        sftp = self._session()  # one session per stream: streams run in parallel threads
        try:
            handle = self._call(sftp.open, f.path, "rb", what="file")
            reader = PipelinedReader(
                sftp, handle, size_hint=f.size, fail=lambda e: self._error(e, "file", f.path)
            )
            try:
                yield _RemoteFile(self, reader, handle, f.path)
            finally:
                if not reader.at_end:
                    # Left early: replies to READs may still come; only closing the session
                    # discards them (the server then closes the file too).
                    sftp.close()
                with suppress(OSError, EOFError, paramiko.SSHException):
                    handle.close()  # after sftp.close() it only marks the handle closed
        finally:
            sftp.close()

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists on the server now."""
        with self._lock:
            try:
                self._sftp.stat(path)
            except FileNotFoundError:
                return False
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise self._error(exc, "file", path) from exc
            return True

    def open(self, f: SourceFile) -> AbstractContextManager[Opened]:
        """``f`` as a stream of its bytes, read ahead through a bounded window of requests."""
        return self._open(f)

    def finish(self, f: SourceFile) -> None:
        """Apply ``after_import``: keep, delete, or move into ``archive_dir`` (made if missing;
        relative to ``remote_dir``)."""
        action = self.config.after_import
        if action == "keep":
            return
        with self._lock:
            if action == "delete":
                self._call(self._sftp.remove, f.path, what="cannot delete")
                return
            assert self.config.archive_dir is not None  # the model requires it with move
            archive = posixpath.join(self._folder, self.config.archive_dir)
            try:
                self._sftp.stat(archive)
            except FileNotFoundError:
                self._call(self._sftp.mkdir, archive, what="cannot create archive_dir")
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise self._error(exc, "archive_dir", archive) from exc
            target = posixpath.join(archive, f.name)
            try:
                self._sftp.posix_rename(f.path, target)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EACCES):
                    raise self._error(exc, "cannot move", f.path) from exc
                # No posix-rename extension: a plain rename, which refuses to overwrite.
                self._call(self._sftp.rename, f.path, target, what="cannot move")
            except (EOFError, paramiko.SSHException) as exc:
                raise self._error(exc, "cannot move", f.path) from exc

    def close(self) -> None:
        """Close the SFTP session and the SSH connection."""
        with suppress(Exception):
            self._sftp.close()
        self._client.close()

    def __enter__(self) -> SftpSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@implementation_for(Sftp)
def _open_sftp(spec: Sftp, settings: Settings) -> SftpSource:
    return SftpSource(spec, environ=settings.environ)
