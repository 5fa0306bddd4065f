"""The SFTP source against servers that misbehave as servers in the field do: one that drops
idle connections (reconnect once), one without posix-rename and an archive that already holds the
name (never overwrite), files swapped or rewritten under the client (a FIFO refused at once, a
rewrite seen by ``Opened.stat``), ready markers removed after the file."""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sftp_servers import IDLE_SECONDS, SftpServer, fifo_in_place
from structlog.testing import capture_logs

from reconciler.errors import SourceError
from reconciler.imports.sources.sftp import SftpSource
from reconciler.model.files import SourceFile
from reconciler.model.specs import Sftp

_UNIQUE = r"export\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ\.csv"


def _connect(server: SftpServer, folder: Path, **fields: Any) -> SftpSource:
    return SftpSource(Sftp.model_validate(server.sftp_fields(folder, **fields)), environ={})


def _idle(source: SftpSource) -> None:
    """Wait until the server has dropped the source's idle connection."""
    deadline = time.monotonic() + IDLE_SECONDS + 5
    while source._link.transport.is_active():
        assert time.monotonic() < deadline, "the server did not drop the idle connection"
        time.sleep(0.05)


def _reconnects(events: list[dict[str, Any]]) -> int:
    return sum(e["event"] == "sftp connection lost: reconnected" for e in events)


def test_a_file_opens_over_a_new_connection_after_an_idle_drop(
    idle_sftp_server: SftpServer,
) -> None:
    """The server dropped the idle connection: the next open reconnects once and reads."""
    folder = idle_sftp_server.folder()
    (folder / "a.csv").write_text("id\n1\n")
    (folder / "b.csv").write_text("id\n2\n")
    with _connect(idle_sftp_server, folder) as source:
        a, b = source.list_files()
        with source.open(a) as stream:
            assert stream.read() == b"id\n1\n"
        _idle(source)
        with capture_logs() as events, source.open(b) as stream:
            assert stream.read() == b"id\n2\n"
    assert _reconnects(events) == 1


def test_exists_and_finish_reconnect_after_an_idle_drop(idle_sftp_server: SftpServer) -> None:
    """A ready-marker check and an after-import action reconnect once each after a drop."""
    folder = idle_sftp_server.folder()
    (folder / "a.csv").write_text("1\n")
    with _connect(idle_sftp_server, folder, after_import="delete") as source:
        (f,) = source.list_files()
        _idle(source)
        with capture_logs() as events:
            assert source.modified(f.path) is not None
        _idle(source)
        with capture_logs() as more:
            source.finish(f)
    assert not (folder / "a.csv").exists()
    assert _reconnects(events) == _reconnects(more) == 1


def test_an_operation_that_finds_the_connection_lost_is_retried_once(
    idle_sftp_server: SftpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loss seen only when the request fails (the check before it saw a live connection) is
    a reconnect and one retry too."""
    folder = idle_sftp_server.folder()
    (folder / "a.csv").write_text("id\n1\n")
    with _connect(idle_sftp_server, folder) as source:
        (f,) = source.list_files()
        _idle(source)
        transport = source._link.transport
        answers = iter([True])  # the first check is fooled; the rest see the truth
        real = transport.is_active
        monkeypatch.setattr(transport, "is_active", lambda: next(answers, None) or real())
        with capture_logs() as events, source.open(f) as stream:
            assert stream.read() == b"id\n1\n"
    assert _reconnects(events) == 1


def test_threads_that_find_the_connection_lost_share_one_reconnect(
    idle_sftp_server: SftpServer,
) -> None:
    """Files opened from several threads at once after a drop reconnect once between them."""
    folder = idle_sftp_server.folder()
    payloads = {f"part_{i}.csv": os.urandom(300_000 + i) for i in range(4)}
    for name, data in payloads.items():
        (folder / name).write_bytes(data)
    read: dict[str, bytes] = {}
    with _connect(idle_sftp_server, folder) as source:
        files = source.list_files()
        _idle(source)

        def load(f: SourceFile) -> None:
            with source.open(f) as stream:
                read[f.name] = stream.read()

        with capture_logs() as events:
            threads = [threading.Thread(target=load, args=(f,)) for f in files]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
    assert read == payloads
    assert _reconnects(events) == 1


def test_a_second_loss_is_the_usual_error(idle_sftp_server: SftpServer, tmp_path: Path) -> None:
    """When the new connection cannot be had either, the operation fails with a SourceError."""
    folder = idle_sftp_server.folder()
    (folder / "a.csv").write_text("1\n")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_bytes(idle_sftp_server.known_hosts.read_bytes())
    with _connect(idle_sftp_server, folder, known_hosts_file=str(known_hosts)) as source:
        (f,) = source.list_files()
        _idle(source)
        known_hosts.write_text("")  # the host key checks apply to the new connection too
        with pytest.raises(SourceError, match="unknown host key"), source.open(f):
            pass


@pytest.mark.parametrize("kind", ["plain_rename", "openssh"])
def test_a_move_onto_a_taken_name_archives_under_a_unique_one(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """The archive already holds the name: yesterday's file stays, today's gets a unique name."""
    server: SftpServer = request.getfixturevalue(f"{kind}_server")
    folder = server.folder()
    (folder / "done").mkdir()
    (folder / "done" / "export.csv").write_text("yesterday\n")
    (folder / "export.csv").write_text("today\n")
    with _connect(server, folder, after_import="move", archive_dir="done") as source:
        (f,) = source.list_files()
        with capture_logs() as events:
            source.finish(f)
    (unique,) = {p.name for p in (folder / "done").iterdir()} - {"export.csv"}
    assert (folder / "done" / "export.csv").read_text() == "yesterday\n"
    assert re.fullmatch(_UNIQUE, unique)
    assert (folder / "done" / unique).read_text() == "today\n"
    assert not (folder / "export.csv").exists()
    (logged,) = [e for e in events if e["event"].startswith("file archived under a unique name")]
    assert logged["archived"] == str(folder / "done" / unique)


def test_a_unique_name_taken_too_gets_a_counter(plain_rename_server: SftpServer) -> None:
    """When the time-stamped name is taken as well, '-2' is added to it."""
    folder = plain_rename_server.folder()
    (folder / "done").mkdir()
    now = datetime.now(UTC)
    taken = ["export.csv"] + [
        f"export.{now + timedelta(seconds=s):%Y-%m-%dT%H-%M-%SZ}.csv" for s in range(-1, 10)
    ]
    for name in taken:
        (folder / "done" / name).write_text("old\n")
    (folder / "export.csv").write_text("new\n")
    with _connect(plain_rename_server, folder, after_import="move", archive_dir="done") as source:
        (f,) = source.list_files()
        source.finish(f)
    (added,) = {p.name for p in (folder / "done").iterdir()} - set(taken)
    assert re.fullmatch(r"export\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ-2\.csv", added)
    assert (folder / "done" / added).read_text() == "new\n"
    assert all((folder / "done" / name).read_text() == "old\n" for name in taken)


@pytest.mark.parametrize("action", ["delete", "move"])
def test_finish_removes_the_ready_marker_after_the_file(
    sftp_server: SftpServer, action: str
) -> None:
    """After deleting or moving a file, its ready marker goes too; a missing one is fine."""
    folder = sftp_server.folder()
    for name in ("a.csv", "a.csv.ready", "b.csv"):
        (folder / name).write_text("1\n")
    archive = {"archive_dir": "done"} if action == "move" else {}
    with _connect(sftp_server, folder, after_import=action, **archive) as source:
        a, b = (f for f in source.list_files() if f.name in ("a.csv", "b.csv"))
        source.finish(SourceFile(a.path, a.name, a.size, a.mtime, f"{a.path}.ready"))
        source.finish(SourceFile(b.path, b.name, b.size, b.mtime, f"{b.path}.ready"))
    assert sorted(p.name for p in folder.iterdir()) == (["done"] if action == "move" else [])
    if action == "move":
        assert sorted(p.name for p in (folder / "done").iterdir()) == ["a.csv", "b.csv"]


def test_a_failed_move_says_so_and_leaves_the_file(sftp_server: SftpServer) -> None:
    """A move the server refuses is a one-line SourceError; the file stays where it was."""
    folder = sftp_server.folder()
    (folder / "done").write_text("a file where the archive folder should be\n")
    (folder / "a.csv").write_text("1\n")
    with _connect(sftp_server, folder, after_import="move", archive_dir="done") as source:
        (f,) = source.list_files()
        with pytest.raises(SourceError) as caught:
            source.finish(f)
    message = caught.value.message
    assert f"cannot move {folder}/a.csv to {folder}/done/a.csv: " in message
    assert message.endswith("; the file stays where it is")
    assert "\n" not in message
    assert (folder / "a.csv").read_text() == "1\n"


@pytest.mark.timeout(30)
def test_a_fifo_in_place_of_a_listed_file_is_refused_at_once(sftp_server: SftpServer) -> None:
    """A FIFO put where a listed file was is refused at once, never read or waited on."""
    folder = sftp_server.folder()
    (folder / "a.csv").write_text("1\n")
    with _connect(sftp_server, folder) as source:
        (f,) = source.list_files()
        fifo_in_place(folder / "a.csv")
        began = time.monotonic()
        with pytest.raises(SourceError) as caught, source.open(f):
            pass
        assert time.monotonic() - began < 5
        assert source.list_files() == []  # the source is still usable: and lists no FIFO
    assert caught.value.message == (
        f"{source.key}: {folder}/a.csv is no longer a regular file (a FIFO was put there after "
        "it was listed); it is not read"
    )


@pytest.mark.timeout(30)
def test_a_handle_that_is_not_a_regular_file_is_refused(hooked_sftp_server: SftpServer) -> None:
    """Swapped between the check of the path and the open: the open handle is checked too
    (with links outside remote_dir allowed, so that the link policy does not refuse it first)."""
    folder = hooked_sftp_server.folder()
    (folder / "a.csv").write_text("1\n")

    def device_in_place(path: Path) -> None:
        path.unlink()
        path.symlink_to("/dev/zero")

    with _connect(hooked_sftp_server, folder, follow_links_outside=True) as source:
        (f,) = source.list_files()
        hooked_sftp_server.arm("stat", folder / "a.csv", device_in_place)
        refused = r"a\.csv is no longer a regular file \(a device"
        with pytest.raises(SourceError, match=refused), source.open(f):
            pass


@pytest.mark.parametrize("request_", ["readdir", "read"])
def test_a_file_rewritten_while_fetched_shows_in_its_stat(
    hooked_sftp_server: SftpServer, request_: str
) -> None:
    """The hooked server rewrites the file in place (same size, 1 -> 7, mtime +5 s) after the
    listing or after its first READ reply: the open file's stat shows the new mtime."""
    folder = hooked_sftp_server.folder()
    original = "id,note\n" + "".join(f"{i},row {i:06d}\n" for i in range(1, 100_001))
    (folder / "batch_1.csv").write_text(original)
    with _connect(hooked_sftp_server, folder) as source:
        hooked_sftp_server.arm(request_, folder / "batch_1.csv")  # type: ignore[arg-type]
        (f,) = source.list_files()
        with source.open(f) as stream:
            data = stream.read().decode()
            size, mtime = stream.stat()
        again = source.list_files()[0]
    rewritten = original.replace("1", "7")
    assert (f.size, size, again.size) == (len(original),) * 3
    assert mtime - f.mtime == timedelta(seconds=5) == again.mtime - f.mtime
    if request_ == "readdir":
        assert data == rewritten
    else:
        first = 255 * 1024  # the first READ reply holds the old bytes; the rest are new
        assert data[:first] == original[:first]
        assert data[first:] == rewritten[first:]
