"""``reconcile serve`` under hostile HTTP clients: a real process under a low open files limit."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Cli
from daemons import Daemon, one, project_yaml, sales_folder, schedule_yaml, wait_until

_LIMIT = 256
# ``python -m reconciler`` with the open files limit lowered, soft and hard (it cannot be lifted).
_LIMITED = [
    sys.executable,
    "-c",
    "import resource, runpy; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({_LIMIT}, {_LIMIT})); "
    "runpy.run_module('reconciler', run_name='__main__', alter_sys=True)",
]


@pytest.fixture
def folder(cli: Cli) -> Path:
    documents = project_yaml() + schedule_yaml("nightly")
    return sales_folder(cli.env["RECONCILER_DATABASE_URL"], cli.cwd, documents)


# Before the bounds, /healthz never answered under these connections; a few seconds leaves room
# for a machine busy with other tests.
_ANSWER_WITHIN = 5.0


def _request(port: int, raw: bytes, timeout: float = _ANSWER_WITHIN) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        return s.recv(4096)


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (reset or end of stream) by now."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _trickle(port: int, closed_after: list[float]) -> None:
    """Send a request's headers one byte every 0.2 s; note when the server hangs up."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: y\r\n" * 1000:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            if _closed(s):
                break
            s.setblocking(True)
            time.sleep(0.2)
    closed_after.append(time.monotonic() - began)


def test_idle_and_slow_clients_cannot_exhaust_the_daemon(
    cli: Cli, folder: Path, database_url: str
) -> None:
    """300 idle connections under a 256 open files limit: /healthz (GET and HEAD) answers within
    seconds, the folder still reloads, idle and byte-a-time clients are closed within the
    request deadline, and stderr stays small."""
    with Daemon(cli.cwd, cli.env, command=_LIMITED) as daemon:
        daemon.wait_ready()
        trickled: list[float] = []
        slow = threading.Thread(target=_trickle, args=(daemon.port, trickled))
        slow.start()
        idle = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(300)]
        try:
            began = time.monotonic()
            answer = _request(daemon.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert time.monotonic() - began < _ANSWER_WITHIN
            head = _request(daemon.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head

            (folder / "sales.yaml").write_text(
                project_yaml() + schedule_yaml("nightly", cron="0 3 * * *")
            )
            wait_until(
                lambda: one(database_url, "SELECT cron_expression FROM cpi_schedules")
                == "0 3 * * *",
                timeout=20, what="the edit applied",
            )  # fmt: skip
            wait_until(lambda: all(_closed(s) for s in idle), timeout=20, what="idle closed")
        finally:
            for s in idle:
                s.close()
        slow.join(timeout=30)
        assert trickled, "the byte-a-time client was never closed"
        assert trickled[0] < 15
        assert daemon.get("/healthz")[0] == 200
        assert daemon.stop() == 0
        log = daemon.log()
        assert len(log) < 20_000, log[-3000:]
        assert "Traceback" not in log
        assert "Too many open files" not in log
