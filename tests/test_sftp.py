"""The SFTP source against real servers on loopback (OpenSSH's sshd and asyncssh): listing,
streaming, authentication, host-key verification, after-import actions, one-line errors; and the
pure parts around it (merging a schedule's override, resolving ``${VAR}`` secrets)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sftp_servers import SftpServer, known_hosts_line, write_key_pair
from structlog.testing import capture_logs

from reconciler import logs
from reconciler.errors import HostKeyError, SecretError, SourceError
from reconciler.imports import secrets
from reconciler.imports.sources.pipelining import REQUESTS, PipelinedReader
from reconciler.imports.sources.sftp import SftpSource
from reconciler.model.files import SourceFile, merge_sftp
from reconciler.model.specs import Sftp, SftpOverride

_ENV = {"SFTP_PASSWORD": "s3cret-Pa55word"}


def _connect(server: SftpServer, folder: Path, **fields: Any) -> SftpSource:
    source = SftpSource(Sftp.model_validate(server.sftp_fields(folder, **fields)), environ=_ENV)
    assert isinstance(source, SftpSource)
    return source


def _fingerprint(public_line: str) -> str:
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _one_line_error(error: SourceError) -> str:
    assert "\n" not in error.message
    return error.message


def test_listing_matches_the_pattern_sorted_by_name(sftp_server: SftpServer) -> None:
    """Regular files matching the pattern, sorted by name; hidden files and folders are not."""
    folder = sftp_server.folder()
    for name in ["sales_b.csv", "sales_a.csv", "other.csv", ".sales_part.csv", "sales_c.txt"]:
        (folder / name).write_text(name)
    (folder / "sales_dir.csv").mkdir()
    (folder / "sales_link.csv").symlink_to(folder / "sales_b.csv")
    with _connect(sftp_server, folder, pattern="sales_*.csv") as source:
        files = source.list_files()
    assert [f.name for f in files] == ["sales_a.csv", "sales_b.csv", "sales_link.csv"]
    first = files[0]
    assert first.path == str(folder / "sales_a.csv")
    assert first.size == len("sales_a.csv")
    assert first.mtime.tzinfo is not None
    assert int(first.mtime.timestamp()) == int((folder / "sales_a.csv").stat().st_mtime)
    assert source.key == f"sftp://{sftp_server.username}@127.0.0.1:{sftp_server.port}"


def test_a_name_that_is_not_utf8_is_skipped_with_a_warning(sftp_server: SftpServer) -> None:
    """A name that is not UTF-8 is left out with a warning naming it escaped; the rest lists."""
    folder = sftp_server.folder()
    (folder / "sales_a.csv").write_text("a")
    for raw in (b"sales_\xe9.csv", b"x\xff.csv"):
        with open(bytes(folder) + b"/" + raw, "wb") as odd:
            odd.write(b"odd")
    with _connect(sftp_server, folder, pattern="*") as source:
        with capture_logs() as events:
            assert [f.name for f in source.list_files()] == ["sales_a.csv"]
        assert [f.name for f in source.list_files()] == ["sales_a.csv"]  # the session still works
    skipped = sorted((e["log_level"], e["folder"], e["name"]) for e in events)
    assert skipped == [
        ("warning", str(folder), "sales_\\xe9.csv"),
        ("warning", str(folder), "x\\xff.csv"),
    ]


@pytest.mark.parametrize("block", [128 * 1024, 1000, 1 << 20, -1])
def test_streaming_gives_the_exact_bytes(sftp_server: SftpServer, block: int) -> None:
    """A multi-megabyte file streams byte for byte, whatever the block size asked for."""
    folder = sftp_server.folder()
    payload = os.urandom(3 * 1024 * 1024 + 12345)
    (folder / "big.csv").write_bytes(payload)
    with _connect(sftp_server, folder) as source:
        (f,) = source.list_files()
        with source.open(f) as stream:
            blocks = list(iter(lambda: stream.read(block), b""))
    assert b"".join(blocks) == payload
    if block > 0:
        assert all(len(b) == block for b in blocks[:-1])


def test_an_empty_file_streams_as_nothing(sftp_server: SftpServer) -> None:
    """A zero-byte file reads as end of file at once."""
    folder = sftp_server.folder()
    (folder / "empty.csv").write_bytes(b"")
    with _connect(sftp_server, folder) as source, source.open(source.list_files()[0]) as stream:
        assert stream.read(65536) == b""


def test_a_file_that_grew_since_listing_is_read_to_its_end(sftp_server: SftpServer) -> None:
    """The listed size is only a hint: the stream ends where the file ends."""
    folder = sftp_server.folder()
    (folder / "grow.csv").write_bytes(b"a" * 1000)
    with _connect(sftp_server, folder) as source:
        (f,) = source.list_files()
        (folder / "grow.csv").write_bytes(b"b" * 300_000)
        with source.open(f) as stream:
            assert stream.read() == b"b" * 300_000


def test_a_stream_left_midway_leaves_the_source_usable(sftp_server: SftpServer) -> None:
    """Stopping early (a failed COPY) discards the read-ahead; the next file reads normally."""
    folder = sftp_server.folder()
    first, second = os.urandom(4 * 1024 * 1024), os.urandom(300_000)
    (folder / "a.csv").write_bytes(first)
    (folder / "b.csv").write_bytes(second)
    with _connect(sftp_server, folder) as source:
        a, b = source.list_files()

        def copy_fails() -> None:
            with source.open(a) as stream:
                assert stream.read(1000) == first[:1000]
                raise RuntimeError("COPY failed")

        with pytest.raises(RuntimeError, match="COPY failed"):
            copy_fails()
        with source.open(a) as stream:
            assert stream.read(1000) == first[:1000]
        with source.open(b) as stream:
            assert stream.read() == second


def test_files_stream_in_parallel_threads(sftp_server: SftpServer) -> None:
    """Several files may be read at once from one source, as the import workers do."""
    folder = sftp_server.folder()
    payloads = {f"part_{i}.csv": os.urandom(700_000 + i) for i in range(4)}
    for name, data in payloads.items():
        (folder / name).write_bytes(data)
    read: dict[str, bytes] = {}
    with _connect(sftp_server, folder) as source:

        def load(f: SourceFile) -> None:
            with source.open(f) as stream:
                read[f.name] = b"".join(iter(lambda: stream.read(50_000), b""))

        threads = [threading.Thread(target=load, args=(f,)) for f in source.list_files()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert read == payloads


def test_the_read_window_stays_bounded(asyncssh_server: SftpServer) -> None:
    """However slowly the consumer reads, at most the window of requests is outstanding."""
    folder = asyncssh_server.folder()
    (folder / "big.csv").write_bytes(b"x" * (10 * 1024 * 1024))
    with _connect(asyncssh_server, folder) as source:
        (f,) = source.list_files()
        with source.open(f) as stream:
            assert isinstance(stream, PipelinedReader)
            seen = []
            while stream.read(64 * 1024):
                seen.append(stream.outstanding)
    assert max(seen) <= REQUESTS
    assert len(seen) == 160


def test_short_replies_are_completed(sftp_server: SftpServer) -> None:
    """READ replies shorter than asked (OpenSSH caps them at 255 KiB) are completed in order."""
    folder = sftp_server.folder()
    payload = os.urandom(5 * 1024 * 1024 + 7)
    (folder / "big.csv").write_bytes(payload)
    with _connect(sftp_server, folder) as source:
        client = source._client.open_sftp()
        with client.open(str(folder / "big.csv"), "rb") as handle:
            reader = PipelinedReader(
                client, handle, size_hint=len(payload), fail=lambda e: SourceError(str(e)),
                requests=4, request_size=1024 * 1024,
            )  # fmt: skip
            assert reader.read() == payload
            assert reader.at_end
        client.close()


def test_key_authentication(sftp_server: SftpServer) -> None:
    """A private key file the server accepts logs in."""
    folder = sftp_server.folder()
    with _connect(sftp_server, folder) as source:
        assert source.list_files() == []


def test_password_authentication_from_a_reference(asyncssh_server: SftpServer) -> None:
    """``password: ${SFTP_PASSWORD}`` is resolved from the environment and logs in."""
    folder = asyncssh_server.folder()
    (folder / "a.csv").write_text("1\n")
    fields = {"private_key_file": None, "password": "${SFTP_PASSWORD}"}
    with _connect(asyncssh_server, folder, **fields) as source:
        assert [f.name for f in source.list_files()] == ["a.csv"]
    assert logs.redact(f"x {_ENV['SFTP_PASSWORD']} y") == "x *** y"


def test_a_wrong_password_fails_in_one_line_without_the_password(
    asyncssh_server: SftpServer,
) -> None:
    """Authentication failure names user and server, asks to check credentials, hides them."""
    config = Sftp.model_validate(
        asyncssh_server.sftp_fields(
            asyncssh_server.folder(), private_key_file=None, password="${SFTP_PASSWORD}"
        )
    )
    wrong = "wrong-Password-42"
    with pytest.raises(SourceError) as caught:
        SftpSource(config, environ={"SFTP_PASSWORD": wrong})
    message = _one_line_error(caught.value)
    assert message == (
        f"authentication failed for user importer on 127.0.0.1:{asyncssh_server.port}: "
        "check the password/private key"
    )
    assert wrong not in message


def test_a_key_the_server_does_not_know_fails_authentication(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    """A private key that is not authorized is an authentication failure."""
    stranger = tmp_path / "stranger_key"
    write_key_pair(stranger)
    with pytest.raises(SourceError, match=r"^authentication failed for user"):
        _connect(sftp_server, sftp_server.folder(), private_key_file=str(stranger))


def test_an_unreachable_port_fails_fast(tmp_path: Path, asyncssh_server: SftpServer) -> None:
    """Nothing listening: a one-line 'connection refused' at once, not after a timeout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    began = time.monotonic()
    with pytest.raises(SourceError) as caught:
        _connect(asyncssh_server, tmp_path, port=port)
    assert time.monotonic() - began < 2
    assert (
        _one_line_error(caught.value) == f"cannot connect to 127.0.0.1:{port}: connection refused"
    )


def test_an_unknown_host_key_is_refused_with_the_way_to_add_it(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    """A server missing from known_hosts is refused; the error shows its key and ssh-keyscan."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    with pytest.raises(HostKeyError) as caught:
        _connect(sftp_server, sftp_server.folder(), known_hosts_file=str(known_hosts))
    message = _one_line_error(caught.value)
    assert f"unknown host key for [127.0.0.1]:{sftp_server.port}: ssh-ed25519 " in message
    assert _fingerprint(sftp_server.host_public_key) in message
    assert f"`ssh-keyscan -p {sftp_server.port} 127.0.0.1 >> {known_hosts}`" in message
    assert not caught.value.retryable


def test_a_changed_host_key_is_refused(sftp_server: SftpServer, tmp_path: Path) -> None:
    """A server whose key differs from known_hosts is refused, naming both fingerprints."""
    impostor = write_key_pair(tmp_path / "old_host_key")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(known_hosts_line("127.0.0.1", sftp_server.port, impostor))
    with pytest.raises(HostKeyError) as caught:
        _connect(sftp_server, sftp_server.folder(), known_hosts_file=str(known_hosts))
    message = _one_line_error(caught.value)
    assert f"host key for [127.0.0.1]:{sftp_server.port} has CHANGED" in message
    assert f"`ssh-keygen -R '[127.0.0.1]:{sftp_server.port}' -f {known_hosts}`" in message
    assert _fingerprint(impostor) in message
    assert _fingerprint(sftp_server.host_public_key) in message


def test_a_missing_known_hosts_file_is_refused(asyncssh_server: SftpServer, tmp_path: Path) -> None:
    """Host keys are always verified: no known_hosts file means no connection."""
    missing = tmp_path / "nowhere" / "known_hosts"
    with pytest.raises(HostKeyError, match=f"known_hosts file {missing} does not exist"):
        _connect(asyncssh_server, asyncssh_server.folder(), known_hosts_file=str(missing))


def test_a_missing_remote_dir_is_reported(sftp_server: SftpServer) -> None:
    """A remote_dir that does not exist is a one-line error naming it."""
    missing = sftp_server.folder() / "nope"
    with pytest.raises(SourceError) as caught:
        _connect(sftp_server, missing).list_files()
    assert _one_line_error(caught.value).endswith(f"remote_dir {missing}: does not exist")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"private_key_file": "/nonexistent/key"}, "cannot load private key /nonexistent/key"),
        ({"private_key_file": None}, "give sftp.password or sftp.private_key_file"),
        ({"password": "${UNSET_VARIABLE}"}, "environment variable UNSET_VARIABLE is not set"),
    ],
)
def test_credentials_problems_are_reported_before_connecting(
    asyncssh_server: SftpServer, fields: dict[str, Any], error: str
) -> None:
    """A missing key file, no credentials, or an unset password variable are clear errors."""
    with pytest.raises((SourceError, SecretError), match=error):
        _connect(asyncssh_server, asyncssh_server.folder(), **fields)


def _after(
    server: SftpServer, action: str, **fields: Any
) -> tuple[Path, Callable[[bool], list[str]]]:
    folder = server.folder()
    (folder / "a.csv").write_text("1\n")
    (folder / "b.csv").write_text("2\n")

    def run(finish: bool) -> list[str]:
        with _connect(server, folder, after_import=action, **fields) as source:
            files = source.list_files()
            for f in files:
                with source.open(f) as stream:
                    stream.read()
            if finish:
                source.finish(files[0])
        return sorted(p.name for p in folder.iterdir())

    return folder, run


@pytest.mark.parametrize("action", ["keep", "delete", "move"])
def test_after_import_acts_only_when_finish_is_called(sftp_server: SftpServer, action: str) -> None:
    """Reading a file never changes it; ``finish`` keeps, deletes or moves it."""
    folder, run = _after(sftp_server, action, archive_dir="done" if action == "move" else None)
    assert run(False) == ["a.csv", "b.csv"]
    after = run(True)
    if action == "keep":
        assert after == ["a.csv", "b.csv"]
    elif action == "delete":
        assert after == ["b.csv"]
    else:
        assert after == ["b.csv", "done"]
        assert (folder / "done" / "a.csv").read_text() == "1\n"


def test_move_into_an_existing_absolute_archive(sftp_server: SftpServer) -> None:
    """An absolute archive_dir that exists is used as is."""
    archive = sftp_server.folder()
    _, run = _after(sftp_server, "move", archive_dir=str(archive))
    assert run(True) == ["b.csv"]
    assert sorted(p.name for p in archive.iterdir()) == ["a.csv"]


def test_a_failed_delete_is_reported(sftp_server: SftpServer) -> None:
    """A file that cannot be deleted (already gone) is a one-line error naming it."""
    folder = sftp_server.folder()
    (folder / "a.csv").write_text("1\n")
    with _connect(sftp_server, folder, after_import="delete") as source:
        (f,) = source.list_files()
        (folder / "a.csv").unlink()
        with pytest.raises(SourceError) as caught:
            source.finish(f)
    assert _one_line_error(caught.value).endswith(f"cannot delete {folder}/a.csv: does not exist")


def test_opening_a_vanished_file_is_reported(sftp_server: SftpServer) -> None:
    """A file removed between listing and reading is a SourceError naming it."""
    folder = sftp_server.folder()
    (folder / "a.csv").write_text("1\n")
    with _connect(sftp_server, folder) as source:
        (f,) = source.list_files()
        (folder / "a.csv").unlink()
        with pytest.raises(SourceError, match=r"file .*a\.csv: does not exist"), source.open(f):
            pass


_PROJECT = Sftp(host="sftp.example.com", username="importer", password="${SFTP_PASSWORD}")


@pytest.mark.parametrize(
    ("project", "override", "expected"),
    [
        (_PROJECT, None, _PROJECT),
        (
            _PROJECT,
            SftpOverride(remote_dir="/outgoing/eu", pattern="eu_*.csv"),
            _PROJECT.model_copy(update={"remote_dir": "/outgoing/eu", "pattern": "eu_*.csv"}),
        ),
        (
            _PROJECT,
            SftpOverride(after_import="move", archive_dir="/done", port=2222),
            _PROJECT.model_copy(
                update={"after_import": "move", "archive_dir": "/done", "port": 2222}
            ),
        ),
        (
            None,
            SftpOverride(host="other.example.com", username="u", private_key_file="/k"),
            Sftp(host="other.example.com", username="u", private_key_file="/k"),
        ),
    ],
)
def test_merge_sftp_puts_the_override_over_the_project(
    project: Sftp | None, override: SftpOverride | None, expected: Sftp
) -> None:
    """Fields the override gives replace the project's; the rest, and the defaults, stay."""
    assert merge_sftp(project, override) == expected


@pytest.mark.parametrize(
    ("project", "override", "error"),
    [
        (None, None, "no source: the project declares no sftp host"),
        (None, SftpOverride(pattern="*.csv"), "no source"),
        (None, SftpOverride(host="h"), "username: Field required"),
        (_PROJECT, SftpOverride(after_import="move"), "after_import 'move' needs 'archive_dir'"),
    ],
)
def test_merge_sftp_refuses_incomplete_settings(
    project: Sftp | None, override: SftpOverride | None, error: str
) -> None:
    """Without a host, a username, or an archive for 'move', there is no usable source."""
    with pytest.raises(SourceError, match=error):
        merge_sftp(project, override)


@pytest.mark.parametrize(
    ("reference", "environ", "expected"),
    [
        (None, {}, None),
        ("${SFTP_PASSWORD}", {"SFTP_PASSWORD": "hunter2-long"}, "hunter2-long"),
        ("${_X1}", {"_X1": "value-of-x1"}, "value-of-x1"),
    ],
)
def test_resolve_reads_the_referenced_variable(
    reference: str | None, environ: dict[str, str], expected: str | None
) -> None:
    """A reference resolves to its variable's value, which is then masked in logs."""
    assert secrets.resolve(reference, environ=environ, where="here") == expected
    if expected:
        assert logs.redact(f"password={expected}") == "password=***"


@pytest.mark.parametrize("environ", [{}, {"SFTP_PASSWORD": ""}, {"OTHER": "x"}])
def test_resolve_refuses_an_unset_variable(environ: dict[str, str]) -> None:
    """An unset or empty variable is a SecretError naming it and where it was needed."""
    with pytest.raises(SecretError) as caught:
        secrets.resolve("${SFTP_PASSWORD}", environ=environ, where="project p: sftp.password")
    assert caught.value.variable == "SFTP_PASSWORD"
    assert caught.value.message.startswith("project p: sftp.password: environment variable")


def test_resolve_never_repeats_a_literal() -> None:
    """Something that is not a reference is refused without echoing it (it may be a secret)."""
    with pytest.raises(ValueError, match="must be a") as caught:
        secrets.resolve("hunter2", environ={}, where="x")
    assert "hunter2" not in str(caught.value)
