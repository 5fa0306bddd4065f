"""Host keys verified against known_hosts as OpenSSH verifies them: the pure reading and matching
of lines, then real connections to both SFTP servers with the files people actually have (a
@cert-authority line, hashed names, wildcards, @revoked keys, lines that cannot be read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import paramiko
import pytest
from sftp_servers import SftpServer, known_hosts_line, write_key_pair
from structlog.testing import capture_logs

from reconciler.errors import HostKeyError
from reconciler.imports.sources.known_hosts import host_matches, parse_known_hosts
from reconciler.imports.sources.sftp import SftpSource
from reconciler.model.specs import Sftp

_ED25519 = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
_KEY = f"ssh-ed25519 {_ED25519}"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (f"@cert-authority *.example.com {_KEY}", "@cert-authority is not supported"),
        (f"@trusted host {_KEY}", "unknown marker @trusted"),
        ("host ssh-ed25519", "it lacks host names, key type or key"),
        (f"@revoked {_KEY}", "it lacks host names, key type or key"),
        ("host ssh-ed25519 not*base64", "its key is not valid base64"),
        ("host ssh-ed25519 AAAA", "its key is not of type ssh-ed25519"),
        (f"host ssh-rsa {_ED25519}", "its key is not of type ssh-rsa"),
        (f"|1|c2FsdA==|aGFzaA== {_KEY}", "its hashed host name is malformed"),
        (f"|2|abc|def {_KEY}", "its hashed host name is malformed"),
    ],
)
def test_unusable_lines_are_skipped_with_a_reason(line: str, reason: str) -> None:
    """A line that cannot verify a server is skipped, saying why; the lines around it stay."""
    usable, skipped = parse_known_hosts(f"a {_KEY}\n{line}\n# comment\n\n  b {_KEY} note\n")
    assert [(u.line, u.hosts) for u in usable] == [(1, ("a",)), (5, ("b",))]
    assert [n for n, _ in skipped] == [2]
    assert skipped[0][1].startswith(reason)


def test_a_revoked_line_is_kept_as_revoked() -> None:
    """@revoked lines are read, with their host patterns, key type and key."""
    ((entry,), skipped) = parse_known_hosts(f"@revoked *,!trusted {_KEY} retired 2025\n")
    assert skipped == []
    assert (entry.revoked, entry.hosts, entry.key_type) == (True, ("*", "!trusted"), "ssh-ed25519")


_HASHED = paramiko.HostKeys.hash_host("[sftp.example.com]:2222")


@pytest.mark.parametrize(
    ("hosts", "name", "matches"),
    [
        (["sftp.example.com"], "sftp.example.com", True),
        (["SFTP.Example.com"], "sftp.example.COM", True),
        (["sftp.example.com"], "[sftp.example.com]:2222", False),
        (["[sftp.example.com]:2222"], "[sftp.example.com]:2222", True),
        (["other", "sftp.example.com"], "sftp.example.com", True),
        (["*.example.com"], "sftp.example.com", True),
        (["*.example.com"], "example.com", False),
        (["sftp?.example.com"], "sftp1.example.com", True),
        (["[10.0.0.?]:22*"], "[10.0.0.7]:2222", True),
        (["*", "!sftp.example.com"], "sftp.example.com", False),
        (["*", "!sftp.example.com"], "ftp.example.com", True),
        ([_HASHED], "[sftp.example.com]:2222", True),
        ([_HASHED], "sftp.example.com", False),
    ],
)
def test_host_patterns_match_as_in_openssh(hosts: list[str], name: str, matches: bool) -> None:
    """Names, wildcards, negations and hashed names match as OpenSSH matches them."""
    assert host_matches(hosts, name) is matches


def _connect(server: SftpServer, known_hosts: str, tmp_path: Path) -> SftpSource:
    path = tmp_path / "known_hosts"
    path.write_text(known_hosts)
    fields: dict[str, Any] = server.sftp_fields(server.folder(), known_hosts_file=str(path))
    source = SftpSource(Sftp.model_validate(fields), environ={})
    assert isinstance(source, SftpSource)
    return source


def _own(server: SftpServer, name: str | None = None, key: str | None = None) -> str:
    return f"{name or f'[127.0.0.1]:{server.port}'} {key or server.host_public_key}\n"


def _ca(tmp_path: Path) -> str:
    return f"@cert-authority * {write_key_pair(tmp_path / 'ca_key')}\n"


def _refused(server: SftpServer, known_hosts: str, tmp_path: Path) -> str:
    with pytest.raises(HostKeyError) as caught:
        _connect(server, known_hosts, tmp_path).close()
    assert "\n" not in caught.value.message
    assert not caught.value.retryable
    return caught.value.message


def test_a_cert_authority_line_then_the_servers_own_line(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    """The @cert-authority line is skipped and logged; the server's own line verifies it."""
    with capture_logs() as events:
        _connect(sftp_server, _ca(tmp_path) + _own(sftp_server), tmp_path).close()
    (skipped,) = [e for e in events if e["event"] == "known_hosts line skipped"]
    assert (skipped["log_level"], skipped["line"]) == ("warning", 1)
    assert skipped["file"] == str(tmp_path / "known_hosts")


def test_a_hashed_line_verifies_the_server(sftp_server: SftpServer, tmp_path: Path) -> None:
    """A name hashed by ``ssh-keygen -H`` (``|1|salt|hash``) matches the server."""
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{sftp_server.port}")
    _connect(sftp_server, _own(sftp_server, name=hashed), tmp_path).close()


def test_a_wildcard_line_verifies_the_server(sftp_server: SftpServer, tmp_path: Path) -> None:
    """A line for ``[127.0.0.*]:*`` covers the server; a negated name for it does not."""
    _connect(sftp_server, _own(sftp_server, name="[127.0.0.*]:*"), tmp_path).close()
    negated = f"[127.0.0.*]:*,![127.0.0.1]:{sftp_server.port}"
    assert _refused(sftp_server, _own(sftp_server, name=negated), tmp_path).startswith(
        f"unknown host key for [127.0.0.1]:{sftp_server.port}: ssh-ed25519 SHA256:"
    )


def test_the_key_type_known_hosts_lists_is_the_one_asked_for(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    """A server with several host keys shows the one known_hosts lists, whatever its type."""
    _connect(sftp_server, _own(sftp_server, key=sftp_server.other_host_key), tmp_path).close()


def test_garbage_lines_are_skipped(sftp_server: SftpServer, tmp_path: Path) -> None:
    """Lines that cannot be read are logged and skipped; the server's own line still counts."""
    garbage = "garbage\n@cert-authority\nhost ssh-ed25519 %%%\n|1|x|y ssh-ed25519 AAAA\n"
    with capture_logs() as events:
        _connect(sftp_server, garbage + _own(sftp_server), tmp_path).close()
    skipped = [e["line"] for e in events if e["event"] == "known_hosts line skipped"]
    assert skipped == [1, 2, 3, 4]


def test_only_unusable_lines_is_a_one_line_error(sftp_server: SftpServer, tmp_path: Path) -> None:
    """Without a usable line for the server, the error names the key and the skipped lines."""
    message = _refused(sftp_server, _ca(tmp_path) + "garbage\n", tmp_path)
    known_hosts = tmp_path / "known_hosts"
    assert message.startswith(
        f"unknown host key for [127.0.0.1]:{sftp_server.port}: ssh-ed25519 SHA256:"
    )
    assert (
        f"is not in {known_hosts} (skipped line 1: @cert-authority is not supported, only a "
        "server's own key line; line 2: it lacks host names, key type or key); check that "
        "fingerprint with the server's operator, then run "
        f"`ssh-keyscan -p {sftp_server.port} 127.0.0.1 >> {known_hosts}`"
    ) in message


@pytest.mark.parametrize("hosts", ["[127.0.0.1]:{port}", "*"])
def test_a_revoked_server_key_is_refused(
    sftp_server: SftpServer, tmp_path: Path, hosts: str
) -> None:
    """A key marked @revoked is refused even when another line lists it as the server's own."""
    name = hosts.format(port=sftp_server.port)
    revoked = f"@revoked {name} {sftp_server.host_public_key}\n"
    message = _refused(sftp_server, _own(sftp_server) + revoked, tmp_path)
    assert message.startswith(
        f"host key for [127.0.0.1]:{sftp_server.port} is REVOKED: the server offered "
        "ssh-ed25519 SHA256:"
    )
    assert f"which line 2 of {tmp_path / 'known_hosts'} marks @revoked" in message


def test_a_revoked_key_of_another_server_changes_nothing(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    """@revoked lines for other keys, or for this key under other names, do not refuse it."""
    other = write_key_pair(tmp_path / "retired_key")
    lines = f"@revoked * {other}\n@revoked elsewhere {sftp_server.host_public_key}\n"
    _connect(sftp_server, lines + _own(sftp_server), tmp_path).close()


def test_a_changed_key_beside_a_matching_one_is_accepted(
    sftp_server: SftpServer, tmp_path: Path
) -> None:
    """Two lines for the server (a key rotation): the one that matches is enough, as in OpenSSH."""
    old = write_key_pair(tmp_path / "old_host_key")
    lines = known_hosts_line("127.0.0.1", sftp_server.port, old) + _own(sftp_server)
    _connect(sftp_server, lines, tmp_path).close()
