"""Fuzzing what a pull request or a delivery can hand reconcile: any YAML text, any CSV bytes.

Every generated input must end in findings or data, never an exception, and each example has a
deadline (Hypothesis fails an example that takes longer), so that a parser that turns slow on
some shape of input is caught here, in the default run, with the shape it was slow on.
"""

from __future__ import annotations

import io
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import DataError
from reconciler.imports.engine.framing import Framed
from reconciler.model.loading import load_files
from reconciler.model.specs import CsvDialect

_DEADLINE = timedelta(milliseconds=500)
_FUZZ = settings(max_examples=150, deadline=_DEADLINE, suppress_health_check=[HealthCheck.too_slow])

# Pieces of the documents' grammar, so that examples reach past the YAML parser into validation.
_PIECES = st.sampled_from(
    [
        "apiVersion: reconciler/v1\n",
        "kind: Project\n",
        "kind: Schedule\n",
        "metadata:\n",
        "  name: sales\n",
        "spec:\n",
        "  target:\n",
        "    table: public.sales\n",
        "  project: sales\n",
        '  cron: "0 0 * * *"\n',
        "  interval: 2h\n",
        "  timezone: UTC\n",
        "  local_files: ['../data/*.csv']\n",
        "  delivery: {settle: 10s, order: mtime}\n",
        "---\n",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ": ",
        "&a ",
        "*a ",
        "!!str ",
        "'",
        '"',
        "\t",
        "\n",
        "<<: *a\n",
        "${VAR}",
        "0755",
        "yes",
        "1:30",
        "\x00",
        "\ufeff",
        "#",
        "|\n",
        ">-\n",
    ]
)
_YAML = st.one_of(
    st.lists(_PIECES | st.text(max_size=20), max_size=60).map("".join).map(str.encode),
    st.binary(max_size=2000),
)


@_FUZZ
@given(_YAML)
def test_any_yaml_text_gives_findings_or_documents_in_time(data: bytes) -> None:
    """Whatever the bytes, validation returns (documents or located findings) within the
    deadline; it never raises."""
    loaded = load_files([("fuzz.yaml", data)])
    assert loaded.ok or loaded.findings


_DIALECTS = st.builds(
    CsvDialect,
    header=st.booleans(),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    quote=st.sampled_from(['"', "'"]),
)
_CSV = st.one_of(
    st.lists(
        st.sampled_from(
            [
                b"a",
                b"1",
                b",",
                b";",
                b'"',
                b"'",
                b"\n",
                b"\r\n",
                b"\r",
                b"\\.",
                b"\xef\xbb\xbf",
                b"\x00",
                b"\xff",
                b" ",
                b"\t",
            ]
        ),
        max_size=400,
    ).map(b"".join),
    st.binary(max_size=4000),
)


@_FUZZ
@given(_CSV, _DIALECTS, st.sampled_from([1, 7, 64, 65536]))
def test_any_csv_bytes_frame_or_fail_in_time(
    data: bytes, dialect: CsvDialect, block_size: int
) -> None:
    """Whatever the bytes and block size, framing yields blocks (at most twice what it was given:
    a line that is exactly \\. gets quoted, and a last line end may be added) or a located
    DataError, within the deadline."""
    framed = Framed(io.BytesIO(data), dialect, block_size=block_size)
    refused: str | None = None
    try:
        if dialect.header:
            framed.header()
        out = sum(len(block) for block in framed.blocks())
    except DataError as exc:
        refused = exc.message
    if refused is None:
        assert out <= 2 * len(data) + 2
    else:
        assert refused.strip()
