"""known_hosts, read as OpenSSH reads it: the policy that verifies an SFTP server's host key.

``imports.sources.sftp`` calls ``load_policy`` before it connects and hands the policy to paramiko,
which passes it every key a server offers. Hashed names, wildcards and negations, several keys per
server and ``@revoked`` keys are understood, unlike paramiko's ``HostKeys``, which fails on the
first ``@cert-authority`` or ``@revoked`` line and keeps one key per type. Lines that cannot be used
(``@cert-authority``: host certificates are not supported) are logged and skipped. An unknown,
changed or revoked key is a ``HostKeyError`` that says what to check and which command fixes it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import paramiko

from reconciler import logs
from reconciler.errors import HostKeyError, SourceError

__all__ = [
    "KnownHost",
    "KnownHostsPolicy",
    "host_matches",
    "keyscan",
    "load_policy",
    "parse_known_hosts",
]

_log = logs.get_logger("reconciler.imports.sources.sftp")  # the log names the SFTP source

_U32 = struct.Struct(">I")
# A DNS name has at most 253 characters; '[name]:port' a few more.
_NAME_MAX = 512
_RSA_SIGNATURES = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")  # what an ssh-rsa key may sign with


class KnownHost(NamedTuple):
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


def _known_host(number: int, fields: list[str]) -> KnownHost:
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
    return KnownHost(number, marker == "@revoked", hosts, key_type, blob)


def parse_known_hosts(text: str) -> tuple[list[KnownHost], list[tuple[int, str]]]:
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


def _piece(text: str) -> str:
    return "".join("." if c == "?" else re.escape(c) for c in text)


def _wildcard(pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern``, where ``*`` is any run and ``?`` any one character.

    The pieces between stars are taken where they first fit and never tried elsewhere (an
    atomic group), which finds a match whenever there is one: ``*a*a*a*b`` read as nested
    ``.*`` would backtrack exponentially, seconds for a line of six stars.
    """
    head, *rest = pattern.split("*")
    if not rest:
        return re.fullmatch(_piece(head), name, re.DOTALL) is not None
    *middle, tail = rest
    regex = _piece(head) + "".join(f"(?>.*?{_piece(m)})" for m in middle if m)
    return re.fullmatch(f"{regex}.*{_piece(tail)}", name, re.DOTALL) is not None


def host_matches(hosts: Sequence[str], name: str) -> bool:
    """Whether ``name`` (``host``, or ``[host]:port`` off port 22) is one of ``hosts``: any
    pattern matches it and no negated one does; case does not matter, as in OpenSSH.

    A name longer than any host name (``_NAME_MAX``) matches nothing, so that a line costs time
    in proportion to its own length."""
    if len(name) > _NAME_MAX:
        return False
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


def keyscan(host: str, port: int, known_hosts: Path) -> str:
    """The command that appends a server's host keys to ``known_hosts``."""
    option = f" -p {port}" if port != 22 else ""
    return f"`ssh-keyscan{option} {host} >> {known_hosts}`"


class KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Verifies the server's key against known_hosts as OpenSSH does: a key a matching line marks
    @revoked is refused; then any matching line with the same key accepts it; a matching line
    with another key means it changed; no matching line means it is unknown.

    The client is given no host keys, so paramiko hands every server key to this policy, after
    the key exchange and before authentication; returning accepts the key."""

    def __init__(
        self,
        known_hosts: Path,
        lines: Sequence[KnownHost],
        skipped: Sequence[tuple[int, str]],
        host: str,
        port: int,
    ) -> None:
        self._known_hosts, self._skipped = known_hosts, skipped
        self._name = host if port == 22 else f"[{host}]:{port}"
        self._keyscan = keyscan(host, port, known_hosts)
        self._lines = [line for line in lines if host_matches(line.hosts, self._name)]

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


def load_policy(path: Path, host: str, port: int) -> KnownHostsPolicy:
    """The policy for ``host``:``port`` from the known_hosts file ``path``; unusable lines are
    logged and skipped, an unreadable file is a ``SourceError``."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        raise SourceError(f"cannot read known_hosts {path}: {reason}") from exc
    lines, skipped = parse_known_hosts(text)
    for number, reason in skipped:
        _log.warning("known_hosts line skipped", file=str(path), line=number, reason=reason)
    return KnownHostsPolicy(path, lines, skipped, host, port)
