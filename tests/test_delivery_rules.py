"""The pure delivery decisions (``model.delivery``) and the ``delivery`` block's validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from reconciler.model.delivery import (
    empty_refusal,
    growth_refusal,
    marker_path,
    ordered,
    waiting,
    without_markers,
)
from reconciler.model.files import SourceFile
from reconciler.model.specs import Delivery

NOW = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)


def _file(name: str, age: float = 3600, size: int = 10) -> SourceFile:
    return SourceFile(f"/in/{name}", name, size, NOW - timedelta(seconds=age))


@pytest.mark.parametrize(
    ("marker", "problem"),
    [
        ("a/b", "not a path"),
        ("..", "not a path"),
        ("{name}", "its own marker"),
        ("{nam}.done", "no placeholder but {name}"),
        ("{NAME}.done", "no placeholder but {name}"),
        ("*.done", "not a pattern"),
        ("{name}.done ", "space"),
        ("", "space"),
    ],
)
def test_a_ready_marker_that_cannot_work_is_refused(marker: str, problem: str) -> None:
    """A marker that is a path, the file itself, a typo'd placeholder or a pattern is an error."""
    with pytest.raises(ValidationError, match=problem):
        Delivery(ready_marker=marker)


@pytest.mark.parametrize("marker", ["{name}.done", "_SUCCESS", "{name}.{name}.ok", "READY"])
def test_a_ready_marker_names_a_file_beside_the_data(marker: str) -> None:
    """Per-file and per-folder markers are valid."""
    assert Delivery(ready_marker=marker).ready_marker == marker


def test_markers_sit_beside_their_file_and_are_not_data() -> None:
    """``{name}`` is the file's name; a marker the listing also matched is dropped."""
    files = [_file("a.csv"), _file("a.csv.done"), _file("b.csv")]
    delivery = Delivery(ready_marker="{name}.done")
    assert marker_path(files[0], "{name}.done") == "/in/a.csv.done"
    assert [f.name for f in without_markers(files, delivery)] == ["a.csv", "b.csv"]
    assert without_markers(files, Delivery()) == files


@pytest.mark.parametrize(
    ("age", "settle", "marker_age", "marker", "taken"),
    [
        (11, 10, None, None, True),
        (9, 10, None, None, False),
        (-5, 0, None, None, False),  # modified in the future: the clocks disagree; wait
        (1, 10, 0, "{name}.ok", True),  # the marker decides, not the settle
        (3600, 0, None, "{name}.ok", False),  # no marker yet
        (10, 0, 20, "{name}.ok", False),  # a marker older than the file vouches for nothing
        (10, 0, 10, "_SUCCESS", True),
    ],
)
def test_a_file_is_taken_once_settled_or_marked(
    age: float, settle: int, marker_age: float | None, marker: str | None, taken: bool
) -> None:
    """Settled by age, or marked ready by a marker no older than the file."""
    f = _file("a.csv", age)
    marked = None if marker_age is None else NOW - timedelta(seconds=marker_age)
    delivery = Delivery(ready_marker=marker)
    why = waiting(f, delivery, now=NOW, modified=lambda _: marked, settle=settle)
    assert (why is None) is taken, why


def test_a_projects_own_settle_wins_over_the_default() -> None:
    """delivery.settle, when given, is used instead of RECONCILER_SETTLE_SECONDS."""
    f = _file("a.csv", 30)
    assert waiting(f, Delivery(settle=60), now=NOW, modified=lambda _: None, settle=0)
    assert waiting(f, Delivery(settle=0), now=NOW, modified=lambda _: None, settle=60) is None


def test_files_are_ordered_by_name_or_mtime() -> None:
    """Name order by default; mtime order (oldest first, then name) when asked."""
    files = [_file("b.csv", 10), _file("a.csv", 5), _file("c.csv", 10)]
    assert [f.name for f in ordered(files, Delivery())] == ["a.csv", "b.csv", "c.csv"]
    by_time = ordered(files, Delivery(order="mtime"))
    assert [f.name for f in by_time] == ["b.csv", "c.csv", "a.csv"]


@pytest.mark.parametrize(
    ("rows", "header", "seen", "replace", "allow", "refused"),
    [
        (0, True, False, False, False, "a header was expected"),
        (0, True, False, True, True, "a header was expected"),
        (0, True, True, True, False, "holds only its header"),
        (0, False, False, True, False, "is empty"),
        (0, True, True, True, True, None),
        (0, True, True, False, False, None),
        (3, True, True, True, False, None),
    ],
)
def test_an_empty_delivery_is_refused_where_it_would_destroy(
    rows: int, header: bool, seen: bool, replace: bool, allow: bool, refused: str | None
) -> None:
    """A missing header is malformed everywhere; no rows only matters to a replace."""
    why = empty_refusal(
        rows=rows, header_expected=header, header_seen=seen, replace=replace,
        delivery=Delivery(allow_empty=allow),
    )  # fmt: skip
    assert (why is None) if refused is None else (why is not None and refused in why)


def test_a_file_that_merely_grew_is_refused() -> None:
    """The digest of the first N bytes equal to a version imported with N bytes: it grew."""
    before = [(53, b"d53"), (20, b"d20")]
    assert growth_refusal(66, before, {53: b"d53", 20: b"x"}) is not None
    assert "with 53 bytes, now 66" in (growth_refusal(66, before, {53: b"d53"}) or "")
    assert growth_refusal(66, before, {53: b"other", 20: b"other"}) is None
    assert growth_refusal(53, before, {}) is None  # not larger: a new version, not growth
