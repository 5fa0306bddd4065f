"""Reading the schedules folder from real files: order, hidden names, symlinks, limits, errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.errors import GuardRefused, UsageError
from reconciler.model.loading import MAX_FILE_BYTES
from reconciler.model.plans import Desired, Kind
from reconciler.reading import load_desired, load_folder, read_folder

PROJECT = (
    "apiVersion: reconciler/v1\nkind: Project\nmetadata: {{name: {}}}\nspec: {{external: true}}\n"
)


def write(path: Path, text: str = "") -> Path:
    """Write ``text`` at ``path``, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def names(folder: Path) -> list[str]:
    """The relative paths ``read_folder`` returns."""
    return [name for name, _ in read_folder(folder)]


def test_yaml_files_recursively_in_sorted_order(tmp_path: Path) -> None:
    """Every .yaml and .yml file under the folder, at any depth, sorted by relative path."""
    for name in ("b.yaml", "a.yml", "z/deeper/c.yaml", "m/d.yaml", "notes.txt", "e.YAML.bak"):
        write(tmp_path / name)
    assert names(tmp_path) == ["a.yml", "b.yaml", "m/d.yaml", "z/deeper/c.yaml"]


def test_names_beginning_with_a_dot_are_skipped(tmp_path: Path) -> None:
    """Hidden files and hidden folders (with everything in them) are not read."""
    write(tmp_path / ".hidden.yaml")
    write(tmp_path / ".git" / "x.yaml")
    write(tmp_path / "team" / ".draft.yaml")
    write(tmp_path / "team" / "ok.yaml")
    assert names(tmp_path) == ["team/ok.yaml"]


def test_configmap_layout_reads_each_file_once(tmp_path: Path) -> None:
    """A ConfigMap mount: visible symlinks into ..data, itself a link to a dated folder."""
    dated = tmp_path / "..2024_01_01_00_00_00.123456789"
    write(dated / "sales.yaml", PROJECT.format("sales"))
    write(dated / "customers.yaml", PROJECT.format("customers"))
    (tmp_path / "..data").symlink_to(dated.name)
    for name in ("sales.yaml", "customers.yaml"):
        (tmp_path / name).symlink_to(Path("..data") / name)
    loaded = load_folder(tmp_path)
    assert loaded.ok, loaded.findings
    assert loaded.files == ("customers.yaml", "sales.yaml")
    assert [d.document.metadata.name for d in loaded.documents] == ["customers", "sales"]


def test_symlinked_folders_are_followed(tmp_path: Path) -> None:
    """A visible symlink to a folder elsewhere is read as if the folder were there."""
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "x.yaml", PROJECT.format("x"))
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    assert names(root) == ["linked/x.yaml"]


def test_symlink_loops_end(tmp_path: Path) -> None:
    """A symlink back to an ancestor is not followed again: each folder is read once."""
    write(tmp_path / "a" / "x.yaml")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "self").symlink_to(".", target_is_directory=True)
    assert names(tmp_path) == ["a/x.yaml"]


def test_oversized_file_is_read_only_up_to_the_limit(tmp_path: Path) -> None:
    """A file past the limit is not read whole; the loader reports it."""
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES * 4)
    ((_, data),) = read_folder(tmp_path)
    assert len(data) == MAX_FILE_BYTES + 1
    (finding,) = load_folder(tmp_path).findings
    assert str(finding) == f"{tmp_path}/big.yaml: larger than 1 MiB: split it into smaller files"


def test_findings_name_files_under_the_folder(tmp_path: Path) -> None:
    """Findings carry the folder as given, then the file's relative path, line and column."""
    write(tmp_path / "conf" / "team" / "bad.yaml", "- 1\n")
    (finding,) = load_folder(tmp_path / "conf").findings
    assert finding.path == f"{tmp_path}/conf/team/bad.yaml"
    assert (finding.line, finding.column) == (1, 1)


def test_empty_folder_is_valid_and_empty(tmp_path: Path) -> None:
    """A folder without YAML files loads to nothing, without findings."""
    loaded = load_folder(tmp_path)
    assert (loaded.ok, loaded.documents, loaded.files) == (True, (), ())


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nope"


def _a_file(tmp_path: Path) -> Path:
    return write(tmp_path / "file.yaml")


def _broken_link(tmp_path: Path) -> Path:
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    return tmp_path


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "pipe.yaml")
    return tmp_path


UNUSABLE = [
    ("missing folder", _missing, "does not exist: create it, or name another with --dir"),
    ("a file, not a folder", _a_file, "is not a folder"),
    ("broken symlink", _broken_link, "gone.yaml is a broken symbolic link"),
    ("not a regular file", _fifo, "pipe.yaml is not a regular file"),
]


@pytest.mark.parametrize(
    ("make", "fragment"), [c[1:] for c in UNUSABLE], ids=[c[0] for c in UNUSABLE]
)
def test_unusable_folder_raises_usage_error(
    tmp_path: Path, make: Callable[[Path], Path], fragment: str
) -> None:
    """A folder that cannot be read completely raises UsageError saying what is wrong."""
    with pytest.raises(UsageError, match=fragment):
        read_folder(make(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file regardless of its mode")
def test_unreadable_file_raises_usage_error(tmp_path: Path) -> None:
    """A file without read permission refuses the whole folder."""
    write(tmp_path / "secret.yaml").chmod(0)
    with pytest.raises(UsageError, match=r"cannot read .*secret\.yaml: Permission denied"):
        read_folder(tmp_path)


def test_load_desired_gives_the_folders_rows_for_the_owner(tmp_path: Path) -> None:
    """load_desired: one row per document, owned by the owner given."""
    write(tmp_path / "p.yaml", PROJECT.format("sales"))
    desired = load_desired(tmp_path, owner="team-a")
    assert isinstance(desired, Desired)
    assert [(r.kind, r.name, r.owner) for r in desired.rows] == [(Kind.PROJECT, "sales", "team-a")]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, r"^schedules folder .*missing does not exist.*; nothing was applied$"),
        ({"p.yaml": "kind: [\n"}, r"p\.yaml:.*\n1 problem\(s\) in .*; nothing was applied \(fix"),
    ],
)
def test_load_desired_refuses_a_folder_it_cannot_read_whole(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    """A missing folder or any finding refuses the whole apply (GuardRefused, exit 3)."""
    folder = tmp_path / "missing" if not files else tmp_path
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(GuardRefused, match=message) as refused:
        load_desired(folder, owner="reconcile")
    assert refused.value.exit_code == 3
