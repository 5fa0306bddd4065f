"""SFTP symbolic links against real servers (OpenSSH's sshd and asyncssh): one that leads outside
``remote_dir`` is not followed unless the project allows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sftp_servers import SftpServer
from structlog.testing import capture_logs

from reconciler.errors import SourceError
from reconciler.imports.sources.sftp import SftpSource
from reconciler.model.specs import Sftp

_ENV = {"SFTP_PASSWORD": "s3cret-Pa55word"}


def _connect(server: SftpServer, folder: Path, **fields: Any) -> SftpSource:
    return SftpSource(Sftp.model_validate(server.sftp_fields(folder, **fields)), environ=_ENV)


def _scene(server: SftpServer) -> tuple[Path, Path]:
    """remote_dir with a file, a link to it, links that leave it (directly, through a link to a
    folder, by ``..``), and the secret file outside that they point to."""
    folder = server.folder()
    outside = folder.parent / f"{folder.name}-elsewhere"
    outside.mkdir()
    (outside / "secret.csv").write_text("id\n1\n")
    (folder / "sub").mkdir()
    (folder / "a.csv").write_text("id\n2\n")
    (folder / "inside.csv").symlink_to(folder / "a.csv")
    (folder / "relative.csv").symlink_to("sub/../a.csv")
    (folder / "out.csv").symlink_to(outside / "secret.csv")
    (folder / "dotdot.csv").symlink_to(f"../{outside.name}/secret.csv")
    (folder / "sub" / "up").symlink_to(outside)
    (folder / "chain.csv").symlink_to("sub/up/secret.csv")
    return folder, outside


def test_a_link_outside_remote_dir_is_skipped_with_a_warning(sftp_server: SftpServer) -> None:
    """Links that stay inside are imported as their files; the ones that leave are skipped,
    each with a warning naming the link and where it leads."""
    folder, outside = _scene(sftp_server)
    with _connect(sftp_server, folder) as source, capture_logs() as events:
        names = [f.name for f in source.list_files()]
    assert names == ["a.csv", "inside.csv", "relative.csv"]
    skipped = sorted((e["path"], e["target"]) for e in events if e["log_level"] == "warning")
    secret = str((outside / "secret.csv").resolve())
    assert skipped == [
        (str(folder / name), secret) for name in ("chain.csv", "dotdot.csv", "out.csv")
    ]
    assert all("follow_links_outside" in e["event"] for e in events if "target" in e)


def test_links_outside_are_followed_when_the_project_allows_it(sftp_server: SftpServer) -> None:
    """sftp.follow_links_outside: true imports them as their files."""
    folder, _ = _scene(sftp_server)
    with _connect(sftp_server, folder, follow_links_outside=True) as source:
        files = source.list_files()
        assert [f.name for f in files] == [
            "a.csv", "chain.csv", "dotdot.csv", "inside.csv", "out.csv", "relative.csv"
        ]  # fmt: skip
        with source.open(next(f for f in files if f.name == "out.csv")) as stream:
            assert stream.read(-1) == b"id\n1\n"


def test_a_link_put_in_place_after_the_listing_is_refused(sftp_server: SftpServer) -> None:
    """A listed file replaced by a link to outside before it is opened is not read."""
    folder, outside = _scene(sftp_server)
    with _connect(sftp_server, folder) as source:
        listed = next(f for f in source.list_files() if f.name == "a.csv")
        (folder / "a.csv").unlink()
        (folder / "a.csv").symlink_to(outside / "secret.csv")
        with pytest.raises(SourceError) as caught, source.open(listed):
            pass
    assert "became a symbolic link to" in caught.value.message
    assert "outside remote_dir" in caught.value.message
