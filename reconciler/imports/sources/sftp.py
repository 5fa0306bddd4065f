"""The SFTP source (paramiko): verified host keys, fast bounded streaming, after-import actions.

Registered for ``Sftp`` with ``imports.sources``: an ``SftpSource`` for one run; the import
engine lists, opens (from several threads at once) and finishes files through it. Every paramiko,
socket and OS error is translated here into a one-line ``SourceError`` or ``HostKeyError`` that
names the server and never the password.

Host keys are always verified, against known_hosts as OpenSSH reads it
(``imports.sources.known_hosts``). Servers drop idle connections (one may sit idle while a file
commits): an operation that finds its connection lost reconnects once, with the same checks, and
is retried; every request, and the start of every session, is bounded by ``read_timeout``.

Nothing is read that is not a regular file when opened (a FIFO put in place of a listed file
would block the server's reader); a symbolic link whose target (the server's REALPATH) is outside
``remote_dir`` is skipped with a warning, and refused if it appears after the listing, unless the
project sets ``sftp.follow_links_outside``; and an archive move never overwrites: the plain SFTP
RENAME, which refuses an existing target, under a unique name when the plain one is taken.

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
import itertools
import posixpath
import socket
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR

from reconciler import logs
from reconciler.errors import HostKeyError, ReconcileError, SourceError
from reconciler.imports import secrets
from reconciler.imports.sources import implementation_for
from reconciler.imports.sources.known_hosts import keyscan, load_policy
from reconciler.imports.sources.pipelining import PipelinedReader
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
# An archive name taken meanwhile by someone else is skipped for the next; this many in a row
# means something renames into the archive as fast as we do: the move fails visibly instead.
_MOVE_ATTEMPTS = 10
_FAILURES = (OSError, EOFError, paramiko.SSHException)  # what paramiko and sockets raise
_T = TypeVar("_T")
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


def _start_sftp(channel: paramiko.Channel, timeout: float) -> None:
    """``channel.invoke_subsystem("sftp")`` with the wait for its answer bounded: paramiko's
    waits for ever on a server that accepts the channel and then never answers."""
    chan: Any = channel  # the event and the message sending are paramiko internals
    message = paramiko.Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(chan.remote_chanid)
    message.add_string("subsystem")
    message.add_boolean(True)
    message.add_string("sftp")
    chan._event_pending()
    chan.transport._send_user_message(message)
    if not chan.event.wait(timeout):
        raise TimeoutError("no answer to the SFTP subsystem request")
    if not chan.event_ready:
        raise chan.transport.get_exception() or paramiko.SSHException("the channel was closed")


def _archive_names(name: str, now: datetime) -> Iterator[str]:
    """``name``, then names unique by the UTC time ``now``: ``export.2026-12-03T06-00-00Z.csv``,
    ``export.2026-12-03T06-00-00Z-2.csv``, ``-3``..."""
    yield name
    stem, ext = posixpath.splitext(name)
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    yield f"{stem}.{stamp}{ext}"
    for n in itertools.count(2):
        yield f"{stem}.{stamp}-{n}{ext}"


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((kind for test, kind in kinds if test(mode)), "something else")


@dataclass(frozen=True, slots=True)
class _Link:
    """One SSH connection, and the SFTP session on it that lists and finishes files."""

    client: paramiko.SSHClient
    transport: paramiko.Transport
    listing: paramiko.SFTPClient

    def close(self) -> None:
        with suppress(Exception):
            self.listing.close()
        self.client.close()


class SftpSource:
    """One SSH connection at a time: listing and after-import on one SFTP session, one session
    per stream; a lost connection is replaced once per operation."""

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
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._password = secrets.resolve(
            config.password, environ=environ, where=f"{self.key} password"
        )
        self._lock = threading.Lock()  # guards the listing session: paramiko's is not thread-safe
        self._relinking = threading.Lock()  # one reconnect at a time, for every thread
        self._link = self._link_up()
        try:
            with self._translating("remote_dir", config.remote_dir, self._link):
                self._folder = self._link.listing.normalize(config.remote_dir)
        except BaseException:
            self._link.close()
            raise
        _log.debug(
            "sftp connected",
            source=self.key,
            cipher=getattr(self._link.transport, "remote_cipher", None),
            folder=self._folder,
        )

    @property
    def _client(self) -> paramiko.SSHClient:
        """The current connection's client (tests open sessions of their own on it)."""
        return self._link.client

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

    def _link_up(self) -> _Link:
        client = self._connect(self._connect_timeout)
        try:
            transport = client.get_transport()
            assert transport is not None  # connect() succeeded
            return _Link(client, transport, self._session(transport))
        except BaseException:
            client.close()
            raise

    def _on_link(self, op: Callable[[_Link], _T]) -> _T:
        """``op`` on the connection; if the connection is found lost, before ``op`` or by its
        failure, a new one (same host-key checks, same login) and ``op`` again, once: a second
        loss is ``op``'s own error."""
        link = self._link
        if not link.transport.is_active():
            return op(self._relink(link))
        try:
            return op(link)
        except SourceError:
            if link.transport.is_active():
                raise
        return op(self._relink(link))

    def _relink(self, lost: _Link) -> _Link:
        """A live connection in place of ``lost``: made by the first thread that asks, and
        shared with those that found the same one lost."""
        with self._relinking:
            if self._link is lost:
                self._link = self._link_up()
                lost.close()
                _log.warning("sftp connection lost: reconnected", source=self.key)
            return self._link

    # -- sessions and error translation -------------------------------------------------------

    def _session(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        """A new SFTP session; opening it, and each request on it, waits ``read_timeout`` at
        most."""
        timeout = self._read_timeout
        try:
            channel = transport.open_session(
                window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE, timeout=timeout
            )
            try:
                channel.settimeout(timeout)
                _start_sftp(channel, timeout)
                return paramiko.SFTPClient(channel)
            except BaseException:
                channel.close()
                raise
        except _FAILURES as exc:
            reason = (
                f"no answer from the server for {timeout:g} s"
                if isinstance(exc, TimeoutError)
                else self._clean(exc)
            )
            raise SourceError(f"{self.key}: cannot start an SFTP session: {reason}") from exc

    def _error(self, exc: BaseException, what: str, path: str, link: _Link) -> SourceError:
        code = exc.errno if isinstance(exc, OSError) else None
        if code == errno.ENOENT:
            reason = "does not exist"
        elif code == errno.EACCES:
            reason = "permission denied"
        elif isinstance(exc, TimeoutError):
            reason = f"no answer from the server for {self._read_timeout:g} s"
        elif not link.transport.is_active():
            reason = "the connection was lost"
        else:
            reason = self._clean(exc)
        return SourceError(f"{self.key}: {what} {path}: {reason}")

    @contextmanager
    def _translating(self, what: str, path: str, link: _Link) -> Iterator[None]:
        """paramiko's, the socket's and the OS's errors inside as one-line ``SourceError``."""
        try:
            yield
        except _FAILURES as exc:
            raise self._error(exc, what, path, link) from exc

    # -- the Source protocol ------------------------------------------------------------------

    def _read_folder(
        self, session: paramiko.SFTPClient, folder: str
    ) -> list[tuple[bytes, paramiko.SFTPAttributes]]:
        """Every entry of ``folder`` but '.' and '..', with its name as the server sent it.

        paramiko's ``listdir_attr`` decodes every name as UTF-8 and fails the whole listing on the
        first that is not (leaving the folder's handle open); this is the same OPENDIR, READDIR
        and CLOSE exchange through paramiko's request method, reading names as bytes."""
        internals: Any = session  # ``_request`` and ``_from_msg`` are paramiko internals
        kind, reply = internals._request(CMD_OPENDIR, folder)
        if kind != CMD_HANDLE:
            raise OSError("the server answered OPENDIR without a handle")
        handle = reply.get_binary()
        entries: list[tuple[bytes, paramiko.SFTPAttributes]] = []
        try:
            while True:
                try:
                    kind, reply = internals._request(CMD_READDIR, handle)
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
            with suppress(*_FAILURES):
                internals._request(CMD_CLOSE, handle)

    def list_files(self) -> list[SourceFile]:
        """Regular files in ``remote_dir`` matching ``pattern`` (as a shell would: hidden files
        only when the pattern starts with '.'), sorted by name. A name that is not UTF-8 cannot
        be matched, recorded or shown faithfully: it is skipped with a warning."""
        with self._lock:
            return self._on_link(self._list)

    def _list(self, link: _Link) -> list[SourceFile]:
        pattern = self.config.pattern
        with self._translating("remote_dir", self._folder, link):
            entries = self._read_folder(link.listing, self._folder)
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
                with self._translating("file", path, link):
                    outside = self._outside(link.listing, path)
                    if outside is not None:
                        _log.warning(
                            "file skipped: a symbolic link to outside remote_dir (set "
                            "sftp.follow_links_outside: true to import it)",
                            source=self.key, path=path, target=outside,
                        )  # fmt: skip
                        continue
                    attrs = link.listing.stat(path)
            if not stat.S_ISREG(attrs.st_mode or 0):
                continue
            files.append(SourceFile(path, name, attrs.st_size or 0, _mtime(attrs)))
        return sorted(files, key=lambda f: f.name)

    def _outside(self, sftp: paramiko.SFTPClient, path: str) -> str | None:
        """Where the link at ``path`` leads when that is outside ``remote_dir`` and the project
        does not follow such links, else ``None``. The server's REALPATH resolves the whole
        chain; one that leaves a link as it is gets its READLINK target read instead."""
        if self.config.follow_links_outside:
            return None
        target = sftp.normalize(path)
        if target == path:
            target = posixpath.normpath(posixpath.join(self._folder, sftp.readlink(path) or ""))
        inside = target == self._folder or target.startswith(self._folder.rstrip("/") + "/")
        return None if inside else target

    def _refuse_unless_regular(self, attrs: paramiko.SFTPAttributes, path: str) -> None:
        mode = attrs.st_mode or 0
        if not stat.S_ISREG(mode):
            raise SourceError(
                f"{self.key}: {path} is no longer a regular file ({_kind(mode)} was put there "
                "after it was listed); it is not read"
            )

    def _refuse_link_outside(self, sftp: paramiko.SFTPClient, path: str) -> None:
        """A link put in place of a listed file after the listing is checked again."""
        if self.config.follow_links_outside or not stat.S_ISLNK(sftp.lstat(path).st_mode or 0):
            return
        target = self._outside(sftp, path)
        if target is not None:
            raise SourceError(
                f"{self.key}: {path} became a symbolic link to {target}, outside remote_dir, "
                "after it was listed; it is not read (set sftp.follow_links_outside: true to "
                "follow such links)"
            )

    def _opened(
        self, link: _Link, f: SourceFile
    ) -> tuple[_Link, paramiko.SFTPClient, paramiko.SFTPFile]:
        """``link`` with a new session on it and ``f`` open on that. The path is checked before
        opening and the handle after: a FIFO is never opened (it would wait for a writer)."""
        sftp = self._session(link.transport)
        try:
            with self._translating("file", f.path, link):
                self._refuse_unless_regular(sftp.stat(f.path), f.path)
                self._refuse_link_outside(sftp, f.path)
                handle = sftp.open(f.path, "rb")
            try:
                with self._translating("file", f.path, link):
                    self._refuse_unless_regular(handle.stat(), f.path)
            except BaseException:
                with suppress(*_FAILURES):
                    handle.close()
                raise
        except BaseException:
            sftp.close()
            raise
        return link, sftp, handle

    @contextmanager
    def _open(self, f: SourceFile) -> Iterator[Opened]:
        link, sftp, handle = self._on_link(lambda fresh: self._opened(fresh, f))
        try:
            reader = PipelinedReader(
                sftp, handle, size_hint=f.size, fail=lambda e: self._error(e, "file", f.path, link)
            )
            try:
                yield reader
            finally:
                if not reader.at_end:
                    # Left early: replies to READs may still come; only closing the session
                    # discards them (the server then closes the file too).
                    sftp.close()
                with suppress(*_FAILURES):
                    handle.close()  # after sftp.close() it only marks the handle closed
        finally:
            sftp.close()

    def open(self, f: SourceFile) -> AbstractContextManager[Opened]:
        """``f`` as a stream of its bytes, read ahead through a bounded window of requests;
        ``SourceError`` at once if it is no longer a regular file."""
        return self._open(f)

    def modified(self, path: str) -> datetime | None:
        """When ``path`` on the server was last modified; None if it does not exist."""
        with self._lock:
            return self._on_link(lambda link: self._modified(link, path))

    def _modified(self, link: _Link, path: str) -> datetime | None:
        try:
            attrs = link.listing.stat(path)
        except FileNotFoundError:
            return None
        except _FAILURES as exc:
            raise self._error(exc, "file", path, link) from exc
        return _mtime(attrs)

    def finish(self, f: SourceFile) -> str | None:
        """Apply ``after_import``: keep, delete, or move into ``archive_dir`` (made if missing;
        relative to ``remote_dir``), never over a file there; then remove ``f``'s ready marker.
        Returns a note when the file was archived under another name than its own."""
        if self.config.after_import == "keep":
            return None
        with self._lock:
            note: str | None = self._on_link(lambda link: self._finish(link, f))
        return note

    def _finish(self, link: _Link, f: SourceFile) -> str | None:
        note = None
        if self.config.after_import == "delete":
            with self._translating("cannot delete", f.path, link):
                link.listing.remove(f.path)
        else:
            note = self._archive(link, f)
        self._remove_marker(link, f)
        return note

    def _remove_marker(self, link: _Link, f: SourceFile) -> None:
        if f.marker is not None:
            try:
                link.listing.remove(f.marker)
            except FileNotFoundError:
                pass  # gone already: what removing it was for
            except _FAILURES as exc:
                raise self._error(exc, "cannot remove the ready marker", f.marker, link) from exc

    def _archive(self, link: _Link, f: SourceFile) -> str | None:
        """Move ``f`` into ``archive_dir`` by the plain SFTP RENAME, which refuses an existing
        target (SFTP v3; OpenSSH links then unlinks), never by posix-rename, which replaces it.
        A name taken, before or during the rename, gives way to the next unique one."""
        assert self.config.archive_dir is not None  # the model requires it with move
        archive = posixpath.join(self._folder, self.config.archive_dir)
        if self._modified(link, archive) is None:
            try:
                link.listing.mkdir(archive)
            except _FAILURES as exc:
                if self._modified(link, archive) is None:  # made by a concurrent run is as good
                    raise self._error(exc, "cannot create archive_dir", archive, link) from exc
        for name in itertools.islice(_archive_names(f.name, datetime.now(UTC)), _MOVE_ATTEMPTS):
            target = posixpath.join(archive, name)
            if self._modified(link, target) is not None:
                continue
            try:
                link.listing.rename(f.path, target)
            except _FAILURES as exc:
                if self._modified(link, target) is not None:
                    continue  # the name was taken meanwhile: the rename refused it
                error = self._error(exc, "cannot move", f"{f.path} to {target}", link)
                raise SourceError(f"{error.message}; the file stays where it is") from exc
            if name == f.name:
                return None
            _log.warning(
                "file archived under a unique name: the plain one is taken",
                source=self.key,
                path=f.path,
                archived=target,
            )
            return f"archived as {target}: {f.name} was taken in archive_dir"
        raise SourceError(
            f"{self.key}: cannot move {f.path} into {archive}: {_MOVE_ATTEMPTS} names tried "
            "were all taken; the file stays where it is"
        )

    def close(self) -> None:
        """Close the SFTP session and the SSH connection."""
        self._link.close()

    def __enter__(self) -> SftpSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@implementation_for(Sftp)
def _open_sftp(spec: Sftp, settings: Settings) -> SftpSource:
    return SftpSource(spec, environ=settings.environ)
