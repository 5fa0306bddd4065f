"""One callback POST inside one deadline: resolve, check, connect, send, read the status line.

``imports.runs.callbacks`` calls ``post`` once per attempt. Every step (the name's resolution, the
connection, TLS, sending, reading) counts against the attempt's single deadline, so a receiver
that trickles its reply a byte at a time is cut there. Only the reply's status line is read, from
at most ``MAX_REPLY`` bytes; the body never is, whatever its size. The host's addresses are
checked against the destination policy (``model.destinations``) and the connection goes to an
address that passed, never to the name again, so a DNS answer that changes in between (rebinding)
cannot reach a refused address. HTTPS still verifies the certificate against the host name.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import threading
import time
from functools import cache
from urllib.parse import urlsplit

from reconciler.model.destinations import Address, Destinations

__all__ = ["MAX_REPLY", "Refused", "post"]

MAX_REPLY = 4096  # bytes of a reply read at most: a status line and its headers fit
_STATUS = re.compile(rb"HTTP/[0-9](?:\.[0-9])? ([0-9]{3})(?: [^\r\n]*)?\r?")


class Refused(Exception):
    """A callback that must not be sent (its URL, or where it leads); no retry can help."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    deadline: float,
    destinations: Destinations,
) -> int:
    """POST ``body`` to ``url`` by ``deadline`` (``time.monotonic``): the reply's status.

    ``Refused`` for a URL that cannot be sent to or a refused destination; ``OSError`` for a
    network failure, ``TimeoutError`` once the deadline has passed.
    """
    scheme, host, port, target = _parts(url)
    addresses = _resolve(host, port, deadline)
    allowed = [a for a in addresses if destinations.refusal(host, a) is None]
    if not allowed:
        raise Refused(f"refused: {host}: {destinations.refusal(host, addresses[0])}")
    sock = _connect(allowed, port, deadline)
    try:
        if scheme == "https":
            sock.settimeout(_left(deadline))
            sock = _tls().wrap_socket(sock, server_hostname=host)
        default = 443 if scheme == "https" else 80
        shown = f"[{host}]" if ":" in host else host
        head = [
            f"POST {target} HTTP/1.1",
            f"Host: {shown}" + ("" if port == default else f":{port}"),
            *(f"{name}: {value}" for name, value in headers.items()),
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        sock.settimeout(_left(deadline))
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        return _read_status(sock, deadline)
    finally:
        sock.close()


def _parts(url: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and request target; ``Refused`` for a URL that cannot be sent."""
    try:
        if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
            raise ValueError
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Refused("refused: the callback_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise Refused("refused: the callback_url is not an absolute http:// or https:// URL")
    if "@" in parts.netloc:
        raise Refused("refused: the callback_url carries credentials ('user:password@')")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), target


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _resolve(host: str, port: int, deadline: float) -> list[Address]:
    """The host's addresses, in the resolver's order; the lookup waits until ``deadline``."""
    try:
        return [ipaddress.ip_address(host.partition("%")[0])]
    except ValueError:
        pass
    found: list[list[Address]] = []
    failed: list[OSError] = []

    def lookup() -> None:  # getaddrinfo has no timeout of its own: it waits in a thread
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(list(dict.fromkeys(ipaddress.ip_address(i[4][0]) for i in infos)))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=lookup, name="callback-resolve", daemon=True)
    thread.start()
    thread.join(_left(deadline))
    if failed:
        raise OSError(f"cannot resolve {host}: {failed[0].strerror or failed[0]}")
    if not found or not found[0]:
        _left(deadline)
        raise OSError(f"cannot resolve {host}")
    return found[0]


def _connect(addresses: list[Address], port: int, deadline: float) -> socket.socket:
    """A connection to the first of ``addresses`` that answers."""
    error: OSError = OSError("no address")
    for address in addresses:
        try:
            return socket.create_connection((str(address), port), timeout=_left(deadline))
        except TimeoutError:
            raise
        except OSError as exc:
            error = exc
    raise error


@cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def _read_status(sock: socket.socket, deadline: float) -> int:
    """The final status of the reply, reading at most ``MAX_REPLY`` bytes of it."""
    reply = b""
    while len(reply) < MAX_REPLY:
        sock.settimeout(_left(deadline))
        chunk = sock.recv(MAX_REPLY - len(reply))
        if not chunk:
            break
        reply += chunk
        status = _final_status(reply)
        if status is not None:
            return status
    if len(reply) >= MAX_REPLY:
        raise OSError(f"no status line in the first {MAX_REPLY} bytes of the reply")
    raise OSError("the receiver closed the connection without an answer")


def _final_status(reply: bytes) -> int | None:
    """The first status of ``reply`` that is not 1xx (informational), once it has arrived."""
    while True:
        line, newline, _ = reply.partition(b"\n")
        if not newline:
            return None
        match = _STATUS.fullmatch(line)
        if match is None:
            raise OSError("the reply is not HTTP")
        status = int(match[1])
        if not 100 <= status < 200:
            return status
        end = reply.find(b"\r\n\r\n")
        if end < 0:
            return None
        reply = reply[end + 4 :]
