"""Reading one remote file over SFTP fast, with a fixed amount of memory: ``PipelinedReader``.

``imports.sources.sftp`` wraps each opened file in one. SFTP answers each READ request separately,
so a reader that waits for every reply is bound by the round trip (paramiko's ``read``: about 5
MB/s), while paramiko's ``prefetch`` sends a request for every block of the whole file at once, from
a helper thread. This reader keeps a fixed window of READ requests outstanding (``requests`` of
``request_size`` bytes) and sends a new one each time the oldest reply is consumed: the server is
never idle, and at most the window is buffered, whatever the size of the file and the pace of the
consumer.

It writes READ requests and parses the replies itself on the SFTP session's channel, taking what the
channel holds in one ``recv``: paramiko's own reply parsing reads each reply in several small
pieces, which cost a fifth more client CPU per byte when measured (``benchmarks/bench_sftp.py``). So
the session must serve only this reader between opening and closing the file:
``imports.sources.sftp`` opens one session per stream, lets this reader drain its replies
(``at_end``) before closing the file through paramiko, and otherwise closes the whole session.

The reader is the open file for the import engine (``Opened``): ``stat`` is an FSTAT of the handle
through paramiko, sent once every reply is in. It is taken as the last read ends, because the
engine asks after its COPY, when the connection may have been dropped for idling.
"""

from __future__ import annotations

import errno
import struct
import sys
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paramiko
from paramiko.sftp import (
    CMD_DATA,
    CMD_READ,
    CMD_STATUS,
    SFTP_EOF,
    SFTP_NO_SUCH_FILE,
    SFTP_PERMISSION_DENIED,
)

__all__ = ["REQUESTS", "REQUEST_SIZE", "PipelinedReader"]

REQUESTS = 32
# OpenSSH answers at most 255 KiB per READ (its 256 KiB message limit less headers); asking for
# exactly that avoids short replies there, and any server may answer less: the rest is re-asked.
REQUEST_SIZE = 255 * 1024
_RECV_SIZE = 1024 * 1024
_FIRST_ID = 1 << 31  # far above paramiko's own request numbers on the same session
_HEADER = struct.Struct(">IBI")  # packet length, type, request id
_U32 = struct.Struct(">I")
_READ_ARGS = struct.Struct(">QI")  # offset, length
_ERRNO = {SFTP_NO_SUCH_FILE: errno.ENOENT, SFTP_PERMISSION_DENIED: errno.EACCES}
_EOF = object()


class PipelinedReader:
    """The bytes of one open remote file, in order; ``read(n)`` as on a binary file; ``stat``."""

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
        channel = sftp.get_channel()
        assert channel is not None
        self._channel = channel
        self._file = remote_file
        # The stubs call this an SFTPHandle; at run time it is the server's opaque handle bytes.
        handle: Any = remote_file.handle
        self._handle_field = _U32.pack(len(handle)) + handle
        self._fail = fail  # turns a paramiko/OS error into ours
        self._window = requests
        self._request_size = request_size
        # Requests go up to the listed size and one beyond it, which confirms the end (or finds
        # that the file grew, and then reading simply goes on).
        self._limit = size_hint
        self._next = 0  # offset of the next request
        self._next_id = _FIRST_ID
        self._pending: deque[tuple[int, int, int]] = deque()  # (request id, offset, length)
        self._replies: dict[int, object] = {}
        self._inbox = bytearray()  # received bytes not yet parsed: at most one partial reply
        self._block = b""
        self._pos = 0
        self.at_end = False  # every reply received: the session is free for paramiko again
        self._final: tuple[int, datetime] | None = None  # FSTAT as the last read ended

    @property
    def outstanding(self) -> int:
        """READ requests sent and not yet handed out (buffered replies are among them)."""
        return len(self._pending)

    def _request(self, offset: int, length: int) -> tuple[int, int, int]:
        num = self._next_id
        self._next_id += 1
        body = self._handle_field + _READ_ARGS.pack(offset, length)
        self._channel.sendall(_HEADER.pack(len(body) + 5, CMD_READ, num) + body)
        return num, offset, length

    def _fill(self) -> None:
        while len(self._pending) < self._window and self._next <= self._limit:
            self._pending.append(self._request(self._next, self._request_size))
            self._next += self._request_size

    def _receive(self) -> None:
        """Take what the channel holds and file every complete reply under its request id."""
        data = self._channel.recv(_RECV_SIZE)
        if not data:
            raise EOFError("the server closed the SFTP session")
        inbox = self._inbox
        inbox += data
        pos, end = 0, len(inbox)
        with memoryview(inbox) as view:
            while end - pos >= _HEADER.size:
                length, kind, num = _HEADER.unpack_from(view, pos)
                stop = pos + 4 + length
                if stop > end:
                    break
                self._replies[num] = _reply(kind, view[pos + _HEADER.size : stop])
                pos = stop
        del inbox[:pos]

    def _chunk(self) -> bytes:
        """The next bytes of the file (one reply), or ``b""`` at the end."""
        if self.at_end:
            return b""
        self._fill()
        num, offset, length = self._pending.popleft()
        while num not in self._replies:
            self._receive()
        reply = self._replies.pop(num)
        if reply is _EOF:
            self._drain()
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
                self._receive()
        self._pending.clear()
        self._replies.clear()
        self.at_end = not self._inbox

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes (all that remain if ``n`` < 0); fewer only at the end."""
        try:
            data = self._read(sys.maxsize if n < 0 else n)
            if not data and n and self.at_end and self._final is None:
                self._final = self._fstat()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._fail(exc) from exc
        return data

    def stat(self) -> tuple[int, datetime]:
        """``(size, mtime)`` of the open file: by FSTAT as the last read ended, or now (after
        draining what remains, so that the session is free) if it was not read to its end."""
        if self._final is not None:
            return self._final
        try:
            while not self.at_end and self._read(REQUEST_SIZE):
                pass  # the file grew past what was read
            return self._fstat()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._fail(exc) from exc

    def _fstat(self) -> tuple[int, datetime]:
        attrs = self._file.stat()
        return attrs.st_size or 0, datetime.fromtimestamp(attrs.st_mtime or 0, UTC)

    def _read(self, n: int) -> bytes:
        parts: list[bytes] = []
        need = n
        while need > 0:
            if self._pos >= len(self._block):
                self._block, self._pos = self._chunk(), 0
                if not self._block:
                    break
            if self._pos == 0 and len(self._block) <= need:
                piece = self._block  # a whole reply: no copy
            else:
                piece = self._block[self._pos : self._pos + need]
            self._pos += len(piece)
            need -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _reply(kind: int, body: memoryview) -> object:
    """A READ reply's payload (after its id): the data, ``_EOF``, or the server's error."""
    if kind == CMD_DATA:
        (size,) = _U32.unpack_from(body, 0)
        return bytes(body[4 : 4 + size])
    if kind == CMD_STATUS:
        (code,) = _U32.unpack_from(body, 0)
        if code == SFTP_EOF:
            return _EOF
        (text_size,) = _U32.unpack_from(body, 4) if len(body) >= 8 else (0,)
        text = bytes(body[8 : 8 + text_size]).decode("utf-8", "replace")
        return OSError(_ERRNO.get(code, errno.EIO), text or f"SFTP status {code}")
    return OSError(errno.EPROTO, f"unexpected SFTP reply type {kind} to READ")
