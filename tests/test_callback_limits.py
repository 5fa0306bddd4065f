"""Callbacks under hostile receivers and hostile URLs: deadlines, reply size, where they may go."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_loading import CRON, load, schedule

from reconciler.errors import UsageError
from reconciler.imports.runs import posting
from reconciler.imports.runs.callbacks import deliver
from reconciler.model.destinations import Destinations, literal_refusal, parse_destinations
from reconciler.settings import load_settings

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
LOOPBACK = Destinations(reach="loopback")


class Raw:
    """A real TCP receiver on loopback: reads one request, then runs ``answer`` on the socket."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.answer, self.requests = answer, []  # type: list[bytes]
        self.sent = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook?token=t0ps3cret"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                with contextlib.suppress(OSError):  # the client hung up: the limits at work
                    self.answer(conn)

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Callable[[socket.socket], None]], Raw]]:
    servers: list[Raw] = []

    def start(answer: Callable[[socket.socket], None]) -> Raw:
        servers.append(Raw(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _trickle(text: bytes) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        for i in range(len(text)):
            conn.sendall(text[i : i + 1])
            time.sleep(1.0)

    return answer


def test_a_reply_trickled_a_byte_a_second_is_cut_at_the_deadline(raw: Any) -> None:
    """The deadline covers the whole attempt, not each read: a trickled status line ends it."""
    server = raw(_trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    began = time.monotonic()
    outcome = deliver(
        server.url(), {}, message_id="job-1", destinations=LOOPBACK, timeout=1.5, attempts=2,
        backoff=0.0,
    )  # fmt: skip
    elapsed = time.monotonic() - began
    assert outcome == {"delivered": False, "attempts": 2, "status_code": None, "error": "timed out"}
    assert 2.9 < elapsed < 5.0


def test_a_body_trickled_a_byte_a_second_is_never_waited_for(raw: Any) -> None:
    """The status line decides: the body (here trickled) is not read at all."""
    body = b"x" * 60
    server = raw(_trickle(b"HTTP/1.1 204 No Content\r\nContent-Length: 60\r\n\r\n" + body))
    # the head arrives in one piece, then the body a byte a second
    server.answer = lambda conn: (
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n"),
        _trickle(body)(conn),
    )
    began = time.monotonic()
    outcome = deliver(server.url(), {}, message_id="job-2", destinations=LOOPBACK, timeout=5)
    assert outcome["delivered"] is True
    assert time.monotonic() - began < 2.0


def test_the_run_budget_bounds_every_attempt_and_wait_together(raw: Any) -> None:
    """``reconcile run``'s budget: three 10 s attempts stop when the budget is spent."""
    server = raw(_trickle(b"HTTP/1.1 200 OK\r\n\r\n"))
    began = time.monotonic()
    outcome = deliver(server.url(), {}, message_id="job-3", destinations=LOOPBACK, budget=2.0)
    assert time.monotonic() - began < 3.5
    assert (outcome["delivered"], outcome["error"]) == (False, "timed out")


def test_a_huge_reply_is_read_only_a_few_kilobytes(raw: Any) -> None:
    """A 256 MiB reply: the status is taken from the first bytes and the connection closed."""
    size, block = 256 * 1024 * 1024, b"\0" * (1024 * 1024)

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(block)):
            conn.sendall(block)
            server.sent += len(block)

    server = raw(answer)
    outcome = deliver(server.url(), {}, message_id="job-4", destinations=LOOPBACK)
    assert outcome["delivered"] is True
    time.sleep(0.5)  # the receiver's writes fail once the client has closed
    assert server.sent < 32 * 1024 * 1024  # at most what the kernel's buffers took


def test_a_redirect_or_a_1xx_is_read_as_http(raw: Any) -> None:
    """An interim 100 is skipped; a redirect is the final answer (never followed)."""
    server = raw(lambda c: c.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\n\r\n"))
    outcome = deliver(server.url(), {}, message_id="job-5", destinations=LOOPBACK)
    assert outcome == {"delivered": False, "attempts": 1, "status_code": 302, "error": "HTTP 302"}


@pytest.mark.parametrize(
    ("allow", "delivered"),
    [(Destinations(), False), (Destinations(reach="public"), False), (LOOPBACK, True),
     (Destinations(hosts=frozenset({"localhost"})), True),
     (parse_destinations("127.0.0.0/8"), True)],
)  # fmt: skip
def test_a_name_resolving_to_loopback_is_refused_unless_allowed(
    raw: Any, allow: Destinations, delivered: bool
) -> None:
    """``localhost`` resolves to loopback: refused by default, sent once the setting allows it."""
    server = raw(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\n\r\n"))
    outcome = deliver(server.url("localhost"), {}, message_id="job-6", destinations=allow)
    assert outcome["delivered"] is delivered
    if not delivered:
        assert outcome["attempts"] == 0
        assert outcome["error"].startswith("refused: localhost: ")
        assert "loopback" in outcome["error"]
        assert server.requests == []


def _resolving_to(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> list[str]:
    """Every name resolves to ``addresses`` (a DNS answer the test controls); the names asked."""
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(posting.socket, "getaddrinfo", getaddrinfo)
    return asked


@pytest.mark.parametrize("address", ["169.254.169.254", "169.254.10.1", "100.100.100.200"])
def test_a_name_resolving_to_link_local_or_metadata_is_never_sent_to(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    """Whatever the setting, a host whose address is link-local or metadata is refused."""
    asked = _resolving_to(monkeypatch, address)
    allow = parse_destinations("loopback,hooks.example.com,0.0.0.0/0")
    outcome = deliver("http://hooks.example.com/x", {}, message_id="j", destinations=allow)
    assert asked == ["hooks.example.com"]
    assert outcome["error"].startswith(f"refused: hooks.example.com: {address} is ")
    assert outcome["error"].endswith("callbacks are never sent there")


def test_the_connection_goes_to_the_checked_address_not_the_name(
    monkeypatch: pytest.MonkeyPatch, raw: Any
) -> None:
    """The name is resolved once and the checked address connected to; it stays the Host."""
    server = raw(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\n\r\n"))
    asked = _resolving_to(monkeypatch, "127.0.0.1")
    allow = parse_destinations("hooks.test")
    outcome = deliver(server.url("hooks.test"), {"a": 1}, message_id="j", destinations=allow)
    assert outcome["delivered"] is True
    assert asked[0] == "hooks.test"
    assert set(asked[1:]) <= {"127.0.0.1"}  # the connection's own look-up of the address
    (request,) = server.requests
    assert request.startswith(b"POST /hook?token=t0ps3cret HTTP/1.1\r\n")
    assert f"\r\nHost: hooks.test:{server.port}\r\n".encode() in request
    assert request.endswith(b'\r\n\r\n{"a":1}')


@pytest.mark.parametrize(
    ("url", "error"),
    [("http://[::1/", "refused: the callback_url is not a valid URL"),
     ("http://h.example:99999/", "refused: the callback_url is not a valid URL"),
     ("ftp://h.example/", "refused: the callback_url is not an absolute http:// or https:// URL"),
     ("http://u:p@h.example/", "refused: the callback_url carries credentials ('user:password@')"),
     ("http://169.254.169.254/latest/meta-data/", "refused: 169.254.169.254: 169.254.169.254 is "
      "link-local, where cloud metadata services answer; callbacks are never sent there")],
)  # fmt: skip
def test_a_stored_url_that_cannot_be_sent_is_an_outcome(url: str, error: str) -> None:
    """A URL written by the old API (never validated) is refused as an outcome, not raised."""
    outcome = deliver(url, {}, message_id="j")
    assert outcome == {"delivered": False, "attempts": 0, "status_code": None, "error": error}


LITERALS = [
    ("169.254.169.254", "169.254.169.254 is link-local, where cloud metadata services answer"),
    ("[fe80::1]", "fe80::1 is link-local, where cloud metadata services answer"),
    ("100.100.100.200", "100.100.100.200 is a cloud metadata service's address"),
    ("[fd00:ec2::254]", "fd00:ec2::254 is a cloud metadata service's address"),
    ("[::ffff:169.254.169.254]", "169.254.169.254 is link-local, where cloud metadata services "
     "answer"),
    ("metadata.google.internal", "metadata.google.internal is a cloud metadata service's name"),
    ("2852039166", "2852039166 is a shorthand IPv4 address: write it as four decimal numbers"),
    ("0xa9.254.169.254", "0xa9.254.169.254 is a shorthand IPv4 address: write it as four "
     "decimal numbers"),
]  # fmt: skip


@pytest.mark.parametrize(("host", "reason"), LITERALS, ids=[c[0] for c in LITERALS])
def test_a_link_local_or_metadata_literal_fails_validate_at_its_position(
    host: str, reason: str
) -> None:
    """validate refuses the literal host with path:line:col, never quoting the URL's token."""
    text = schedule(CRON, f"  callback_url: 'http://{host}/latest?token=t0ps3cret'")
    found = [str(f) for f in load(text).findings]
    assert found == [
        f"schedules.d/s0.yaml:8:17: spec.callback_url: {reason}; callbacks are never sent there"
    ]


@pytest.mark.parametrize(
    "host", ["10.0.0.5", "[::1]", "127.0.0.1", "hooks.example.com", "192.168.1.1", "[fd00::1]"]
)
def test_other_hosts_pass_validate(host: str) -> None:
    """Loopback and private literals are the setting's business, at send time."""
    assert literal_refusal(host.strip("[]")) is None
    assert not load(schedule(CRON, f"  callback_url: 'http://{host}/x'")).findings


SETTINGS = [
    ("", Destinations()),
    ("public", Destinations(reach="public")),
    (" Loopback , hooks.internal., 10.20.0.0/16", parse_destinations("loopback,hooks.internal,"
     "10.20.0.0/16")),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), SETTINGS)
def test_the_allow_setting_is_read(text: str, expected: Destinations) -> None:
    """RECONCILER_CALLBACK_ALLOW: one reach (default private), host names and networks."""
    settings = load_settings(environ={"RECONCILER_CALLBACK_ALLOW": text, "HOME": "/tmp"})
    assert settings.callback_allow == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("public,private", "gives two reaches (public, private): give one at most"),
     ("10.0.0.1/8", "'10.0.0.1/8' is not one of public, private, loopback, a host name or a "
      "network such as 10.20.0.0/16 (host bits clear)"),
     ("169.254.0.0/16", "'169.254.0.0/16' is link-local, metadata or multicast: callbacks are "
      "never sent there"),
     ("metadata.google.internal", "'metadata.google.internal' is a cloud metadata service: it "
      "is never allowed")],
)  # fmt: skip
def test_an_allow_setting_that_cannot_work_is_a_usage_error(text: str, message: str) -> None:
    """A bad entry names the variable and says what to write."""
    with pytest.raises(UsageError) as caught:
        load_settings(environ={"RECONCILER_CALLBACK_ALLOW": text, "HOME": "/tmp"})
    assert caught.value.message == f"RECONCILER_CALLBACK_ALLOW={text!r}: {message}"


@pytest.mark.parametrize(
    ("allow", "address", "refused"),
    [(Destinations(), "10.1.2.3", False), (Destinations(), "127.0.0.1", True),
     (Destinations(), "0.0.0.0", True), (Destinations(), "8.8.8.8", False),
     (Destinations(reach="public"), "10.1.2.3", True),
     (Destinations(reach="public"), "8.8.8.8", False),
     (parse_destinations("public,10.1.0.0/16"), "10.1.2.3", False),
     (parse_destinations("public,10.1.0.0/16"), "10.2.2.3", True),
     (LOOPBACK, "::1", False), (LOOPBACK, "fe80::1", True),
     (LOOPBACK, "::ffff:127.0.0.1", False), (Destinations(), "::ffff:127.0.0.1", True),
     (Destinations(), "64:ff9b::a9fe:a9fe", True), (LOOPBACK, "224.0.0.1", True)],
)  # fmt: skip
def test_the_policy_by_address(allow: Destinations, address: str, refused: bool) -> None:
    """Each reach against each kind of address; link-local and metadata never pass."""
    import ipaddress

    assert (allow.refusal("h.example", ipaddress.ip_address(address)) is not None) is refused


def test_standard_webhooks_verifies_a_real_callback(raw: Any) -> None:
    """The receiver in the README's example: the standardwebhooks package verifies the POST."""
    from standardwebhooks.webhooks import Webhook

    server = raw(lambda c: c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n"))
    deliver(server.url(), {"status": "succeeded"}, message_id="job-7", secret=SECRET,
            destinations=LOOPBACK)  # fmt: skip
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    headers = dict(
        line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:]
    )  # the receiver's framework hands these over
    assert Webhook(SECRET).verify(body, headers) == {"status": "succeeded"}
    assert json.loads(body) == {"status": "succeeded"}
