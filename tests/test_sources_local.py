"""The local-files source: globs relative to the YAML folder, confinement to the local roots,
stable order, streaming, and files always kept. Real files and symlinks under ``tmp_path``."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import SourceError
from reconciler.imports.sources.local import LocalSource, local_source
from reconciler.model.files import SourceFile


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``root/`` (the allowed root) with ``schedules.d/`` and ``data/``; ``outside/`` beside it."""
    root = tmp_path / "root"
    (root / "schedules.d" / "team").mkdir(parents=True)
    data = root / "data"
    data.mkdir()
    for name, text in [("sales_b.csv", "b\n"), ("sales_a.csv", "a\n"), ("other.txt", "x\n")]:
        (data / name).write_text(text)
    (data / "sales_dir.csv").mkdir()  # a folder matching the glob is not a file
    (data / ".sales_hidden.csv").write_text("h\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("s\n")
    return root


def _source(tree: Path, *patterns: str) -> LocalSource:
    return LocalSource(patterns, base_dir=tree / "schedules.d" / "team", roots=[tree])


def _names(files: list[SourceFile]) -> list[str]:
    return [f.name for f in files]


@pytest.mark.parametrize(
    ("patterns", "names"),
    [
        (["../../data/sales_*.csv"], ["sales_a.csv", "sales_b.csv"]),
        (["../../data/*"], ["other.txt", "sales_a.csv", "sales_b.csv"]),
        (["../../data/sales_b.csv", "../../data/sales_a.csv"], ["sales_a.csv", "sales_b.csv"]),
        (["../../data/sales_*.csv", "../../data/sales_a.csv"], ["sales_a.csv", "sales_b.csv"]),
        (["../../**/sales_a.csv"], ["sales_a.csv"]),
        (["../../data/.sales_*.csv"], [".sales_hidden.csv"]),
        (["../../data/nothing_*.csv"], []),
    ],
)
def test_globs_match_files_once_sorted_by_name(
    tree: Path, patterns: list[str], names: list[str]
) -> None:
    """Globs are relative to the YAML folder; files only, each once, sorted; none is no error."""
    files = _source(tree, *patterns).list_files()
    assert _names(files) == names
    assert all(os.path.isabs(f.path) for f in files)


def test_a_listed_file_carries_size_and_utc_mtime(tree: Path) -> None:
    """Size and modification time come from the file; the time is aware UTC."""
    path = tree / "data" / "sales_a.csv"
    os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    (f,) = _source(tree, "../../data/sales_a.csv").list_files()
    assert f == SourceFile(
        str(path), "sales_a.csv", 2, datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    )


def test_an_absolute_pattern_inside_the_roots_is_allowed(tree: Path) -> None:
    """An absolute glob works as long as what it matches is inside a root."""
    files = _source(tree, str(tree / "data" / "sales_*.csv")).list_files()
    assert _names(files) == ["sales_a.csv", "sales_b.csv"]


def test_a_missing_literal_path_is_an_error(tree: Path) -> None:
    """A path without glob characters that does not exist is a mistake worth reporting."""
    with pytest.raises(SourceError, match=r"data/missing\.csv: no such file"):
        _source(tree, "../../data/missing.csv").list_files()


def test_a_literal_folder_is_an_error(tree: Path) -> None:
    """Naming a folder instead of a file says so."""
    with pytest.raises(SourceError, match="is not a regular file"):
        _source(tree, "../../data/sales_dir.csv").list_files()


def _escape_by_dotdot(tree: Path) -> str:
    return "../../../outside/secret.csv"


def _escape_by_absolute_path(tree: Path) -> str:
    return str(tree.parent / "outside" / "secret.csv")


def _escape_by_glob(tree: Path) -> str:
    return "../../../outside/*.csv"


def _escape_by_symlinked_file(tree: Path) -> str:
    (tree / "data" / "link.csv").symlink_to(tree.parent / "outside" / "secret.csv")
    return "../../data/link.csv"


def _escape_by_symlinked_folder(tree: Path) -> str:
    (tree / "data" / "elsewhere").symlink_to(tree.parent / "outside")
    return "../../data/elsewhere/*.csv"


def _escape_to_missing_path(tree: Path) -> str:
    return "../../../outside/missing.csv"


@pytest.mark.parametrize(
    "escape",
    [
        _escape_by_dotdot,
        _escape_by_absolute_path,
        _escape_by_glob,
        _escape_by_symlinked_file,
        _escape_by_symlinked_folder,
        _escape_to_missing_path,
    ],
)
def test_nothing_leads_out_of_the_local_roots(tree: Path, escape: Callable[[Path], str]) -> None:
    """Neither '..', an absolute path, a glob nor a symlink reaches a file outside the roots."""
    pattern = escape(tree)
    with pytest.raises(SourceError, match="outside the local roots") as caught:
        _source(tree, pattern).list_files()
    assert "RECONCILER_LOCAL_ROOTS" in caught.value.message
    assert "\n" not in caught.value.message


def test_a_symlink_inside_the_roots_is_followed(tree: Path) -> None:
    """A symlink whose target stays inside the roots is fine; the listed path is the link."""
    (tree / "data" / "latest.csv").symlink_to(tree / "data" / "sales_b.csv")
    (f,) = _source(tree, "../../data/latest.csv").list_files()
    assert f.path == str(tree / "data" / "latest.csv")
    with _source(tree).open(f) as stream:
        assert stream.read() == b"b\n"


def test_a_symlink_redirected_after_listing_is_refused_at_open(tree: Path) -> None:
    """The roots are checked again when a file is opened, not only when it is listed."""
    link = tree / "data" / "latest.csv"
    link.symlink_to(tree / "data" / "sales_b.csv")
    source = _source(tree, "../../data/latest.csv")
    (f,) = source.list_files()
    link.unlink()
    link.symlink_to(tree.parent / "outside" / "secret.csv")
    with pytest.raises(SourceError, match="outside the local roots"), source.open(f):
        pass


def test_several_roots_each_allow_their_files(tmp_path: Path) -> None:
    """Any one of the roots is enough."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (second / "x.csv").write_text("1\n")
    source = local_source([str(second / "*.csv")], base_dir=first, roots=[first, second])
    assert _names(source.list_files()) == ["x.csv"]


def test_reading_streams_the_exact_bytes_in_blocks(tree: Path) -> None:
    """``open`` gives the file's bytes, read in blocks of the requested size."""
    payload = os.urandom(300_000)
    (tree / "data" / "big.csv").write_bytes(payload)
    with _source(tree, "../../data/big.csv") as source:
        (f,) = source.list_files()
        with source.open(f) as stream:
            blocks = list(iter(lambda: stream.read(128 * 1024), b""))
    assert [len(b) for b in blocks] == [131072, 131072, 37856]
    assert b"".join(blocks) == payload


def test_finish_keeps_local_files(tree: Path) -> None:
    """Local files are never deleted or moved, whatever happens."""
    source = _source(tree, "../../data/sales_*.csv")
    for f in source.list_files():
        source.finish(f)
    source.close()
    assert (tree / "data" / "sales_a.csv").exists()
    assert source.key == "local"


def test_a_file_removed_after_listing_fails_to_open(tree: Path) -> None:
    """A file that vanished between listing and reading is a SourceError naming it."""
    source = _source(tree, "../../data/sales_a.csv")
    (f,) = source.list_files()
    (tree / "data" / "sales_a.csv").unlink()
    with pytest.raises(SourceError, match=r"cannot open .*sales_a\.csv"), source.open(f):
        pass


@pytest.fixture
def no_listing_outside(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail at once (an AssertionError, which no glob swallows) if a folder whose real path is
    outside the root is listed."""
    root = os.path.realpath(tree)

    def guard(real: Any) -> Any:
        def listing(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, str | bytes | os.PathLike):
                where = os.path.realpath(os.fsdecode(path))
                assert os.path.commonpath([where, root]) == root, f"listed {where}"
            return real(path, *args, **kwargs)

        return listing

    monkeypatch.setattr(os, "scandir", guard(os.scandir))
    monkeypatch.setattr(os, "listdir", guard(os.listdir))


@pytest.mark.parametrize(
    "pattern",
    ["/**/*.x", "/*", "/etc/*", "/proc/*/environ", "/etc/passwd", "/[a-z]*/*.csv", "../../../*"],
)
@pytest.mark.usefixtures("no_listing_outside")
def test_a_pattern_whose_fixed_part_is_outside_is_refused_unseen(tree: Path, pattern: str) -> None:
    """A glob rooted outside the roots (even at '/') is refused from its text: nothing there,
    not even /proc, is listed."""
    full = os.path.normpath(os.path.join(tree / "schedules.d" / "team", pattern))
    with pytest.raises(SourceError) as caught:
        _source(tree, pattern).list_files()
    assert caught.value.message == (
        f"{full} is outside the local roots ({os.path.realpath(tree)}); "
        "add its folder to RECONCILER_LOCAL_ROOTS to allow imports from it"
    )


def test_the_refusal_does_not_tell_what_exists_outside(tree: Path) -> None:
    """Whether the folder or file outside exists, or is a symlink, the refusal reads the same."""
    outside = tree.parent / "outside"
    (outside / "link.csv").symlink_to(outside / "secret.csv")
    messages = {
        _refusal(tree, str(outside / name)).replace(name, "NAME")
        for name in ["secret.csv", "link.csv", "missing.csv", "*.csv", "nope/*.csv"]
    }
    assert len(messages) == 1


def _refusal(tree: Path, pattern: str) -> str:
    with pytest.raises(SourceError) as caught:
        _source(tree, pattern).list_files()
    return caught.value.message


@pytest.mark.parametrize("pattern", ["../../data/*.csv", "../../**/*.csv", "../../*/link.csv"])
def test_a_glob_inside_matching_a_file_that_leads_out_is_refused(tree: Path, pattern: str) -> None:
    """A glob rooted inside that matches a symlink to a file outside is refused, naming both."""
    (tree / "data" / "link.csv").symlink_to(tree.parent / "outside" / "secret.csv")
    message = _refusal(tree, pattern)
    link, secret = tree / "data" / "link.csv", tree.parent / "outside" / "secret.csv"
    assert message.startswith(f"{link} (really {secret}) is outside the local roots")


@pytest.mark.parametrize("pattern", ["../../**/*.csv", "../../data/*/*.csv", "../../**"])
@pytest.mark.usefixtures("no_listing_outside")
def test_a_folder_that_leads_out_is_refused_before_it_is_listed(tree: Path, pattern: str) -> None:
    """A symlink to a folder outside is refused when the walk reaches it, never listed."""
    elsewhere = tree / "data" / "elsewhere"
    elsewhere.symlink_to(tree.parent / "outside")
    message = _refusal(tree, pattern)
    assert message.startswith(f"{elsewhere} (really {tree.parent / 'outside'}) is outside")


def test_folders_linked_inside_the_roots_are_followed(tree: Path) -> None:
    """A symlink to a folder inside the roots is walked like the folder itself."""
    (tree / "data" / "current").symlink_to(tree / "data")
    for pattern in ["../../data/current/sales_*.csv", "../../data/*/sales_a.csv"]:
        files = _source(tree, pattern).list_files()
        assert sorted({f.name for f in files}) == ["sales_a.csv", "sales_b.csv"][: len(files)]
    deep = _source(tree, "../../**/sales_a.csv").list_files()
    assert [f.name for f in deep] == ["sales_a.csv"]  # a link back up ends the walk, found once


def test_a_root_named_through_a_symlink_holds_its_files(tmp_path: Path, tree: Path) -> None:
    """A root given as a symlink allows the paths written through it."""
    named = tmp_path / "named_root"
    named.symlink_to(tree)
    source = LocalSource([str(named / "data" / "*.csv")], base_dir=named, roots=[named])
    assert _names(source.list_files()) == ["sales_a.csv", "sales_b.csv"]


@pytest.mark.parametrize(
    "pattern",
    [
        "**",
        "**/*.csv",
        "../../**",
        "../../**/*",
        "../../**/.sales_hidden.csv",
        "../../*/sales_?.csv",
        "../../data/[so]*",
        "../../data/.*",
        "../../data/**/sales_a.csv",
        "../../*/*/*",
        "../../data/sales_a.csv/*",
        "../../missing/*",
    ],
)
def test_globs_inside_the_roots_match_as_the_glob_module(tree: Path, pattern: str) -> None:
    """Inside the roots, a glob matches exactly what ``glob.glob(recursive=True)`` matches."""
    (tree / "schedules.d" / "team" / "team.yaml").write_text("")
    (tree / "data" / "sales_dir.csv" / "inner.csv").write_text("i\n")
    full = os.path.normpath(os.path.join(tree / "schedules.d" / "team", pattern))
    expected = sorted(os.path.normpath(p) for p in glob.glob(full, recursive=True))
    assert sorted(_source(tree).matches(pattern)) == expected
