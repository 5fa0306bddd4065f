"""Reading one remote file over SFTP fast, with a fixed amount of memory: ``PipelinedReader``.

``imports.sftp`` wraps each opened file in one. SFTP answers each READ request separately, so a
reader that waits for every reply is bound by the round trip, while paramiko's ``prefetch`` sends
a request for every block of the whole file at once, from a helper thread. This reader keeps a
fixed window of READ requests outstanding (``requests`` of ``request_size`` bytes) and sends a new
one each time the oldest reply is consumed: the server is never idle, and at most the window (plus
the SSH channel window) is buffered, whatever the size of the file and the pace of the consumer.

It speaks through paramiko's SFTP request layer (``_async_request``/``_read_response``, the same
calls ``SFTPFile.prefetch`` and ``readv`` are built on): replies are dispatched by request number
to ``_async_response``. The client session must serve only this reader while it reads.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import paramiko
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, int64

__all__ = ["REQUESTS", "REQUEST_SIZE", "PipelinedReader"]

REQUESTS = 32
# 128 KiB: OpenSSH answers at most 255 KiB per READ, and a short reply costs an extra request.
REQUEST_SIZE = 128 * 1024
_EOF = object()


class PipelinedReader:
    """The bytes of one open remote file, in order; ``read(n)`` as on a binary file."""

    def __init__(
        self,
        sftp: paramiko.SFTPClient,
        remote_file: paramiko.SFTPFile,
        *,
        size_hint: int,
        fail: Callable[[BaseException], Exception],
        requests: int = REQUESTS,
        request_size: int = REQUEST_SIZE,
    ) -> None:
        # Any: the request layer (_async_request, _read_response) is not in paramiko's stubs.
        self._sftp: Any = sftp
        # The stubs call this an SFTPHandle; at run time it is the server's opaque handle bytes.
        self._handle: Any = remote_file.handle
        self._fail = fail  # turns a paramiko/OS error into ours
        self._window = requests
        self._request_size = request_size
        # Requests go up to the listed size and one beyond it, which confirms the end (or finds
        # that the file grew, and then reading simply goes on).
        self._limit = size_hint
        self._next = 0  # offset of the next request
        self._pending: deque[tuple[int, int, int]] = deque()  # (request number, offset, length)
        self._replies: dict[int, object] = {}
        self._block = b""
        self._pos = 0
        self.at_end = False

    @property
    def outstanding(self) -> int:
        """READ requests sent and not yet handed out (buffered replies are among them)."""
        return len(self._pending)

    # Called by paramiko's SFTPClient._read_response for each reply to one of our requests.
    def _async_response(self, kind: int, msg: paramiko.Message, num: int) -> None:
        if kind == CMD_DATA:
            self._replies[num] = msg.get_string()
        elif kind == CMD_STATUS:
            try:
                self._sftp._convert_status(msg)  # raises for every status but OK
                self._replies[num] = OSError("READ answered with OK and no data")
            except EOFError:
                self._replies[num] = _EOF
            except OSError as exc:
                self._replies[num] = exc
        else:
            self._replies[num] = OSError(f"unexpected SFTP reply type {kind} to READ")

    def _request(self, offset: int, length: int) -> tuple[int, int, int]:
        num: int = self._sftp._async_request(
            self, CMD_READ, self._handle, int64(offset), int(length)
        )
        return num, offset, length

    def _fill(self) -> None:
        while len(self._pending) < self._window and self._next <= self._limit:
            self._pending.append(self._request(self._next, self._request_size))
            self._next += self._request_size

    def _chunk(self) -> bytes:
        """The next bytes of the file (one reply), or ``b""`` at the end."""
        if self.at_end:
            return b""
        self._fill()
        num, offset, length = self._pending.popleft()
        while num not in self._replies:
            self._sftp._read_response()
        reply = self._replies.pop(num)
        if reply is _EOF:
            self._drain()
            self.at_end = True
            return b""
        if isinstance(reply, BaseException):
            raise reply
        assert isinstance(reply, bytes)
        if offset + len(reply) > self._limit:
            self._limit = sys.maxsize  # the file grew since it was listed: read to its end
        if len(reply) < length:
            # A short reply (servers cap READ sizes): ask for the rest before anything later.
            self._pending.appendleft(self._request(offset + len(reply), length - len(reply)))
        self._fill()
        return reply

    def _drain(self) -> None:
        """Wait for the replies still outstanding after the end (they are all EOF)."""
        for num, _, _ in self._pending:
            while num not in self._replies:
                self._sftp._read_response()
            self._replies.pop(num)
        self._pending.clear()

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes (all that remain if ``n`` < 0); fewer only at the end."""
        try:
            return self._read(sys.maxsize if n < 0 else n)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._fail(exc) from exc

    def _read(self, n: int) -> bytes:
        parts: list[bytes] = []
        need = n
        while need > 0:
            if self._pos >= len(self._block):
                self._block, self._pos = self._chunk(), 0
                if not self._block:
                    break
            if self._pos == 0 and len(self._block) <= need:
                piece = self._block  # the common case, block-aligned reads: no copy
            else:
                piece = self._block[self._pos : self._pos + need]
            self._pos += len(piece)
            need -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)
