"""Completion callbacks against real local HTTP servers: retries, timeouts, Standard Webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from reconciler.imports.runs.callbacks import deliver, sign
from reconciler.model.destinations import Destinations

LOOPBACK = Destinations(reach="loopback")  # the receivers here listen on loopback
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Receiver(ThreadingHTTPServer):
    """Answers each POST with the next status of ``statuses`` (the last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[Message, bytes]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook?token=t0ps3cret"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.headers, body))  # case-insensitive, as HTTP is
        index = min(len(self.server.requests), len(self.server.statuses)) - 1
        status = self.server.statuses[index]
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    """A real HTTP server on loopback answering with the parametrized statuses."""
    server = Receiver(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_signature_matches_the_standard_webhooks_vector() -> None:
    """sign() reproduces the reference signature of the Standard Webhooks specification."""
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _verify(headers: Message, body: bytes) -> bool:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return headers["webhook-signature"] == f"v1,{expected}"


@pytest.mark.parametrize("receiver", [[500, 503, 200]], indirect=True)
def test_retries_until_delivered_and_signs_every_attempt(receiver: Receiver) -> None:
    """Two failures then success: three signed attempts with one message id, delivered."""
    waits: list[float] = []
    outcome = deliver(
        receiver.url, {"status": "succeeded"}, message_id="job-1", secret=SECRET,
        destinations=LOOPBACK, backoff=0.5, sleep=waits.append,
    )  # fmt: skip
    assert outcome == {"delivered": True, "attempts": 3, "status_code": 200, "error": None}
    assert waits == [0.5, 1.0]
    assert len(receiver.requests) == 3
    for headers, body in receiver.requests:
        assert json.loads(body) == {"status": "succeeded"}
        assert headers["webhook-id"] == "job-1"
        assert headers["Content-Type"] == "application/json"
        assert _verify(headers, body)


@pytest.mark.parametrize(
    ("receiver", "attempts", "status"),
    [([400], 1, 400), ([302], 1, 302), ([429, 404], 2, 404), ([500], 3, 500)],
    indirect=["receiver"],
)
def test_only_transient_answers_are_retried(receiver: Receiver, attempts: int, status: int) -> None:
    """4xx and redirects are final; 429 and 5xx are retried, up to the attempt limit."""
    outcome = deliver(
        receiver.url, {}, message_id="job-2", destinations=LOOPBACK, sleep=lambda _: None
    )
    assert outcome == {
        "delivered": False, "attempts": attempts, "status_code": status, "error": f"HTTP {status}"
    }  # fmt: skip
    assert "webhook-signature" not in receiver.requests[0][0]


def test_a_receiver_that_never_answers_times_out() -> None:
    """Each attempt gives up after the timeout; the outcome says so."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        outcome = deliver(
            url, {}, message_id="job-3", destinations=LOOPBACK, timeout=0.3, attempts=2,
            backoff=0.0,
        )  # fmt: skip
    assert outcome == {"delivered": False, "attempts": 2, "status_code": None, "error": "timed out"}


def test_an_unreachable_receiver_is_reported() -> None:
    """A refused connection is retried and reported, never raised."""
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    outcome = deliver(
        f"http://127.0.0.1:{port}/", {}, message_id="job-4", destinations=LOOPBACK, backoff=0.0
    )
    assert outcome["attempts"] == 3
    assert not outcome["delivered"]
    assert "refused" in outcome["error"].lower()
