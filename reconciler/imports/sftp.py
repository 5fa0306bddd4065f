"""The SFTP source (paramiko): verified host keys, fast bounded streaming, after-import actions.

``sources.sftp_source`` builds an ``SftpSource`` for one run; the import engine lists, opens (from
several threads at once) and finishes files through it. Every paramiko, socket and OS error is
translated here into a one-line ``SourceError`` or ``HostKeyError`` that names the server and never
the password.

Host keys are checked against known_hosts as OpenSSH checks them (hashed names, wildcards and
negations, several keys per server, ``@revoked`` keys refused), not by paramiko's ``HostKeys``,
which fails on the first ``@cert-authority`` or ``@revoked`` line and keeps one key per type.
Lines that cannot be used (``@cert-authority``: host certificates are not supported) are logged
and skipped.

Speed with flat memory: paramiko's plain ``read`` waits for each 32 KiB reply (about 5 MB/s), and
its ``prefetch`` queues a READ for every 32 KiB of the file up front from a helper thread. So the
connection uses our own socket with TCP_NODELAY, a larger SSH window and packet size, AES-GCM
first (paramiko's cheapest cipher by far: no separate MAC), and each open file streams through
``PipelinedReader`` (``imports.pipelining``): a fixed window of outstanding READ requests.
``benchmarks/bench_sftp.py`` measures it against OpenSSH's ``sftp``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import hashlib
import hmac
import posixpath
import re
import socket
import stat
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, NamedTuple

import paramiko
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR

from reconciler import logs
from reconciler.errors import HostKeyError, ReconcileError, SourceError
from reconciler.imports import secrets
from reconciler.imports.pipelining import PipelinedReader
from reconciler.model.files import Readable, SourceFile
from reconciler.model.specs import Sftp

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


# -- known_hosts, read as OpenSSH reads it ------------------------------------------------------

_U32 = struct.Struct(">I")
_RSA_SIGNATURES = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")  # what an ssh-rsa key may sign with


class _KnownHost(NamedTuple):
    """A usable known_hosts line: a server's own key, or (``revoked``) a key never to trust."""

    line: int
    revoked: bool
    hosts: tuple[str, ...]  # patterns: names, '*' and '?' wildcards, '!' negations, |1| hashes
    key_type: str
    blob: bytes  # the public key as the server sends it


def _hashed(pattern: str) -> tuple[bytes, bytes]:
    """The salt and HMAC-SHA1 of a hashed host name, ``|1|salt|hash`` (ssh-keygen -H)."""
    parts = pattern.split("|")
    try:
        if len(parts) == 4 and parts[:2] == ["", "1"]:
            salt, digest = (base64.b64decode(p, validate=True) for p in parts[2:])
            if len(salt) == len(digest) == hashlib.sha1().digest_size:
                return salt, digest
    except binascii.Error:
        pass
    raise ValueError("its hashed host name is malformed")


def _known_host(number: int, fields: list[str]) -> _KnownHost:
    marker = fields.pop(0) if fields[0].startswith("@") else None
    if marker == "@cert-authority":
        raise ValueError("@cert-authority is not supported, only a server's own key line")
    if marker not in (None, "@revoked"):
        raise ValueError(f"unknown marker {marker}")
    if len(fields) < 3:
        raise ValueError("it lacks host names, key type or key")
    hosts, key_type, encoded = tuple(fields[0].split(",")), fields[1], fields[2]
    for pattern in hosts:
        if pattern.startswith("|"):
            _hashed(pattern)
    try:
        blob = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("its key is not valid base64") from None
    name = key_type.encode()
    if not blob.startswith(_U32.pack(len(name)) + name):
        raise ValueError(f"its key is not of type {key_type}")
    return _KnownHost(number, marker == "@revoked", hosts, key_type, blob)


def _parse_known_hosts(text: str) -> tuple[list[_KnownHost], list[tuple[int, str]]]:
    """The usable lines of a known_hosts file, and ``(line number, reason)`` for the others."""
    usable, skipped = [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            usable.append(_known_host(number, fields))
        except ValueError as exc:
            skipped.append((number, str(exc)))
    return usable, skipped


def _wildcard(pattern: str, name: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def _host_matches(hosts: Sequence[str], name: str) -> bool:
    """Whether ``name`` (``host``, or ``[host]:port`` off port 22) is one of ``hosts``: any
    pattern matches it and no negated one does; case does not matter, as in OpenSSH."""
    name = name.lower()
    found = False
    for pattern in hosts:
        if pattern.startswith("|"):
            salt, digest = _hashed(pattern)
            mine = hmac.new(salt, name.encode(), hashlib.sha1).digest()
            found = hmac.compare_digest(mine, digest) or found
        elif pattern.startswith("!"):
            if _wildcard(pattern[1:].lower(), name):
                return False
        elif _wildcard(pattern.lower(), name):
            found = True
    return found


def _fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _keyscan(host: str, port: int, known_hosts: Path) -> str:
    """The command that appends a server's host keys to ``known_hosts``."""
    option = f" -p {port}" if port != 22 else ""
    return f"`ssh-keyscan{option} {host} >> {known_hosts}`"


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Verifies the server's key against known_hosts as OpenSSH does: a key a matching line marks
    @revoked is refused; then any matching line with the same key accepts it; a matching line
    with another key means it changed; no matching line means it is unknown.

    The client is given no host keys, so paramiko hands every server key to this policy, after
    the key exchange and before authentication; returning accepts the key."""

    def __init__(
        self,
        known_hosts: Path,
        lines: Sequence[_KnownHost],
        skipped: Sequence[tuple[int, str]],
        host: str,
        port: int,
    ) -> None:
        self._known_hosts, self._skipped = known_hosts, skipped
        self._name = host if port == 22 else f"[{host}]:{port}"
        self._keyscan = _keyscan(host, port, known_hosts)
        self._lines = [line for line in lines if _host_matches(line.hosts, self._name)]

    def key_types(self) -> tuple[str, ...]:
        """The key types known for this server, first to last, as algorithm names."""
        types = (line.key_type for line in self._lines if not line.revoked)
        return tuple(a for t in types for a in (_RSA_SIGNATURES if t == "ssh-rsa" else (t,)))

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        name, known_hosts, blob = self._name, self._known_hosts, key.asbytes()
        offered = f"{key.get_name()} {_fingerprint(blob)}"
        for line in self._lines:
            if line.revoked and line.blob == blob:
                raise HostKeyError(
                    f"host key for {name} is REVOKED: the server offered {offered}, which line "
                    f"{line.line} of {known_hosts} marks @revoked; do not connect until the "
                    "server's operator has replaced that key, then add the new one with "
                    + self._keyscan
                )
        own = [line for line in self._lines if not line.revoked]
        if any(line.blob == blob for line in own):
            return
        if own:
            known = next((k for k in own if k.key_type == key.get_name()), own[0])
            raise HostKeyError(
                f"host key for {name} has CHANGED: {known_hosts} has {known.key_type} "
                f"{_fingerprint(known.blob)}, the server offered {offered}. This may be an "
                f"attack; if the change is expected, run `ssh-keygen -R '{name}' -f "
                f"{known_hosts}`, then add the new key with ssh-keyscan"
            )
        skipped = "; ".join(f"line {n}: {reason}" for n, reason in self._skipped[:3])
        if len(self._skipped) > 3:
            skipped += f"; {len(self._skipped) - 3} more"
        raise HostKeyError(
            f"unknown host key for {name}: {offered} is not in {known_hosts}"
            + (f" (skipped {skipped})" if skipped else "")
            + "; check that fingerprint with the server's operator, then run "
            + self._keyscan
        )


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
                f"create it with {_keyscan(config.host, config.port, known_hosts)} after checking "
                "the fingerprint, or set sftp.known_hosts_file"
            )
        pkey = self._private_key()
        if pkey is None and self._password is None:
            raise SourceError(f"{self.key}: give sftp.password or sftp.private_key_file")
        policy = self._known_hosts(known_hosts)
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

    def _known_hosts(self, path: Path) -> _KnownHostsPolicy:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            reason = exc.strerror or _one_line(exc)
            raise SourceError(f"cannot read known_hosts {path}: {reason}") from exc
        lines, skipped = _parse_known_hosts(text)
        for number, reason in skipped:
            _log.warning("known_hosts line skipped", file=str(path), line=number, reason=reason)
        return _KnownHostsPolicy(path, lines, skipped, self.config.host, self.config.port)

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
                mtime = datetime.fromtimestamp(attrs.st_mtime or 0, UTC)
                files.append(SourceFile(path, name, attrs.st_size or 0, mtime))
        return sorted(files, key=lambda f: f.name)

    @contextmanager
    def _open(self, f: SourceFile) -> Iterator[Readable]:
        sftp = self._session()  # one session per stream: streams run in parallel threads
        try:
            handle = self._call(sftp.open, f.path, "rb", what="file")
            reader = PipelinedReader(
                sftp, handle, size_hint=f.size, fail=lambda e: self._error(e, "file", f.path)
            )
            try:
                yield reader
            finally:
                if not reader.at_end:
                    # Left early: replies to READs may still come; only closing the session
                    # discards them (the server then closes the file too).
                    sftp.close()
                with suppress(OSError, EOFError, paramiko.SSHException):
                    handle.close()  # after sftp.close() it only marks the handle closed
        finally:
            sftp.close()

    def open(self, f: SourceFile) -> AbstractContextManager[Readable]:
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
