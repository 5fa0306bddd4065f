"""The loader's contract, pure: bytes in, documents and ``path:line:col`` findings out."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.model.loading import MAX_FILE_BYTES, Loaded, load_files
from reconciler.model.parsing import MAX_DEPTH, MAX_NODES, MAX_RESUMES
from reconciler.model.specs import ProjectDocument, ScheduleDocument

EXAMPLES = Path(__file__).parent.parent / "schedules.d"
SFTP_EXAMPLE = Path(__file__).parent.parent / "examples" / "sftp" / "customers.yaml"

PROJECT = """\
apiVersion: reconciler/v1
kind: Project
metadata:
  name: sales
spec:
  target: {table: public.sales}
"""


def schedule(*spec: str, name: str = "daily", project: str = "sales") -> str:
    """A Schedule whose spec lines start at line 7 (line 6 is ``project``)."""
    head = f"apiVersion: reconciler/v1\nkind: Schedule\nmetadata:\n  name: {name}\nspec:\n"
    return head + f"  project: {project}\n" + "".join(line + "\n" for line in spec)


def load(*texts: str | bytes, root: str = "schedules.d") -> Loaded:
    """Load the project file and then each text as ``s<i>.yaml``."""
    files = [("p.yaml", PROJECT.encode())]
    files += [
        (f"s{i}.yaml", text if isinstance(text, bytes) else text.encode())
        for i, text in enumerate(texts)
    ]
    return load_files(files, display_root=root)


CRON = '  cron: "0 0 * * *"'

FAILURES = [
    # (id, text, "line:col", message fragment)
    (
        "unknown key",
        schedule(CRON, "  enabeld: true"),
        "8:3",
        "spec: unknown key 'enabeld' (did you mean 'enabled'?)",
    ),
    (
        "unknown key, nothing close",
        schedule(CRON, "  zzz: 1"),
        "8:3",
        "spec: unknown key 'zzz' (allowed: project, cron, interval,",
    ),
    (
        "unknown nested key",
        schedule(CRON, "  sftp_override: {remote_dri: /x}"),
        "8:19",
        "spec.sftp_override: unknown key 'remote_dri' (did you mean 'remote_dir'?)",
    ),
    (
        "unknown top-level key",
        schedule(CRON) + "metdata: {}\n",
        "8:1",
        "unknown key 'metdata' (did you mean 'metadata'?)",
    ),
    (
        "wrong type: boolean",
        schedule(CRON, "  enabled: maybe"),
        "8:12",
        "spec.enabled: expected true or false, got 'maybe'",
    ),
    (
        "wrong type: number for text",
        schedule(CRON, "  timezone: 5"),
        "8:13",
        "spec.timezone: expected text, got the number 5: quote it",
    ),
    (
        "wrong type: quoted port",
        schedule(CRON, '  sftp_override: {port: "22"}'),
        "8:25",
        "spec.sftp_override.port: expected a whole number, got '22': remove the quotes",
    ),
    (
        "wrong type: mapping expected",
        schedule(CRON, "  sftp_override: [a]"),
        "8:3",
        "spec.sftp_override: expected a mapping of keys to values, got a list",
    ),
    (
        "literal choice",
        PROJECT.replace("{table: public.sales}", "{table: t, mode: apend}").replace(
            "name: sales", "name: other"
        ),
        "6:28",
        "spec.target.mode: 'apend' is not one of 'append', 'replace', 'upsert' (did you mean",
    ),
    (
        "value check",
        schedule(CRON, "  timezone: Mars/Olympus"),
        "8:13",
        "spec.timezone: unknown time zone 'Mars/Olympus'",
    ),
    (
        "model check at the mapping's key",
        schedule(CRON, "  interval: 2h"),
        "5:1",
        "spec: give exactly one of 'cron' and 'interval'",
    ),
    (
        "missing required key",
        schedule(CRON).replace("  project: sales\n", ""),
        "5:1",
        "spec: missing required key 'project'",
    ),
    (
        "missing top-level key",
        "apiVersion: reconciler/v1\nkind: Schedule\nspec: {project: sales, cron: '@daily'}\n",
        "1:1",
        "missing required key 'metadata'",
    ),
    (
        "bad apiVersion",
        schedule(CRON).replace("reconciler/v1", "reconcile/v1"),
        "1:13",
        "apiVersion: 'reconcile/v1' is not one of 'reconciler/v1' (did you mean 'reconciler/v1'?)",
    ),
    (
        "bad kind",
        schedule(CRON).replace("kind: Schedule", "kind: Shedule"),
        "2:7",
        "kind: 'Shedule' is not one of 'Project', 'Schedule' (did you mean 'Schedule'?)",
    ),
    (
        "missing kind",
        schedule(CRON).replace("kind: Schedule\n", ""),
        "1:1",
        "missing required key 'kind' (Project or Schedule)",
    ),
    (
        "missing apiVersion",
        schedule(CRON).replace("apiVersion: reconciler/v1\n", ""),
        "1:1",
        "missing required key 'apiVersion': add apiVersion: reconciler/v1",
    ),
    (
        "kind not text",
        schedule(CRON).replace("kind: Schedule", "kind: [Schedule]"),
        "2:1",
        "kind: must be 'Project' or 'Schedule', got a list",
    ),
    ("not a mapping", "- a\n- b\n", "1:1", "a document must be a mapping"),
    ("a single value", "hello\n", "1:1", "a document must be a mapping"),
    (
        "YAML 1.1 boolean",
        schedule(CRON, "  enabled: on"),
        "8:12",
        "ambiguous YAML 1.1 boolean 'on': write true or false, or quote it",
    ),
    ("YAML 1.1 boolean, capitalised", schedule(CRON, "  enabled: Yes"), "8:12", "boolean 'Yes'"),
    (
        "YAML 1.1 base 60",
        schedule("  interval: 1:30:00"),
        "7:13",
        "'1:30:00' would be read as the number 5400 in YAML 1.1: quote it",
    ),
    (
        "YAML 1.1 base 60, leading zero",
        schedule(CRON, "  timezone: 06:00"),
        "8:13",
        "'06:00' would be read as the number 360 in YAML 1.1: quote it",
    ),
    (
        "YAML 1.1 underscores",
        schedule(CRON, "  misfire_grace: 1_000"),
        "8:18",
        "'1_000' would be read as the number 1000 in YAML 1.1",
    ),
    (
        "leading zero",
        schedule(CRON, "  misfire_grace: 0300"),
        "8:18",
        "'0300' has a leading zero, which YAML 1.1 reads as an octal number",
    ),
    (
        "unquoted star",
        schedule("  cron: */5 * * * *"),
        "7:9",
        "a value starting with '*' must be quoted (e.g. cron: \"*/5 * * * *\")",
    ),
    ("unquoted star in a list", schedule(CRON, "  local_files: [*.csv]"), "8:17", "'*' must be"),
    ("unquoted at sign", schedule("  cron: @daily"), "7:9", "a value starting with '@' must be"),
    (
        "unknown alias",
        schedule("  cron: *daily"),
        "7:9",
        "unknown alias '*daily': a value starting with '*' must be quoted",
    ),
    (
        "duplicate key",
        schedule(CRON, '  cron: "5 0 * * *"'),
        "8:3",
        "duplicate key 'cron' (first at line 7): keep one",
    ),
    (
        "merge key",
        schedule(CRON, "  <<: {enabled: true}"),
        "8:3",
        "merge keys ('<<') are not supported: write the keys out",
    ),
    ("custom tag", schedule(CRON, "  timezone: !Zone UTC"), "8:13", "unsupported tag '!Zone'"),
    ("bad typed tag", schedule(CRON, "  enabled: !!bool maybe"), "8:12", "is not a valid bool"),
    ("tab indentation", schedule(CRON, "\tenabled: true"), "8:1", "indent with spaces, not tabs"),
    (
        "stray colon",
        schedule(CRON, "  timezone: a: b"),
        "8:14",
        "unexpected ':': check the indentation",
    ),
    ("unclosed flow", schedule(CRON, "  local_files: [a.csv"), "9:1", "invalid YAML: "),
    ("complex key", schedule(CRON, "  ? [a]\n  : 1"), "8:5", "a key must be plain text"),
    ("control character", schedule(CRON, "  timezone: U\x07TC"), "8:14", "control characters"),
    (
        "undeclared project",
        schedule(CRON, project="salse"),
        "6:12",
        "spec.project: project 'salse' is not declared in this folder (did you mean 'sales'?); "
        "add a Project document, or one with 'external: true'",
    ),
    (
        "duplicate name across files",
        PROJECT,
        "4:9",
        "metadata.name: Project 'sales' is already declared at schedules.d/p.yaml:4:9",
    ),
]


@pytest.mark.parametrize(
    ("text", "where", "fragment"), [c[1:] for c in FAILURES], ids=[c[0] for c in FAILURES]
)
def test_failure_is_located_and_explained(text: str, where: str, fragment: str) -> None:
    """Each kind of mistake gives one finding at its line:col saying what to do."""
    loaded = load(text)
    found = [str(f) for f in loaded.findings]
    assert not loaded.ok
    assert len(found) == 1, found
    assert found[0].startswith(f"schedules.d/s0.yaml:{where}: "), found
    assert fragment in found[0], found


def test_all_findings_of_all_files_in_one_pass() -> None:
    """Findings of several documents and files come back together, ordered by file and line."""
    bad_bool = schedule(CRON, "  enabled: maybe", name="a")
    bad_key = schedule(CRON, "  crn: x", name="b")
    loaded = load(bad_bool + "---\n" + bad_key, schedule("  interval: 1h", name="c", project="x"))
    where = [(f.path, f.line) for f in loaded.findings]
    assert where == [
        ("schedules.d/s0.yaml", 8),
        ("schedules.d/s0.yaml", 17),
        ("schedules.d/s1.yaml", 6),
    ]
    assert [d.document.metadata.name for d in loaded.documents] == ["sales", "c"]


VALID = [
    ("one schedule", schedule(CRON), 1),
    ("several documents", schedule(CRON, name="a") + "---\n" + schedule("  interval: 2h"), 2),
    ("empty documents are skipped", "---\n---\n# only a comment\n---\n" + schedule(CRON), 1),
    ("an empty file", "", 0),
    ("comments only", "# nothing yet\n", 0),
    ("explicit document end", schedule(CRON) + "...\n", 1),
    (
        "flow style",
        "{apiVersion: reconciler/v1, kind: Schedule, metadata: {name: f},\n"
        " spec: {project: sales, interval: 7200}}\n",
        1,
    ),
    ("quoted YAML 1.1 words", schedule(CRON, '  timezone: "UTC"', "  enabled: TRUE"), 1),
    ("str tag", schedule(CRON, "  callback_url: !!str https://x.example/hook"), 1),
    ("byte order mark", "\ufeff" + schedule(CRON), 1),
    ("windows line ends", schedule(CRON).replace("\n", "\r\n"), 1),
    (
        "the 'null' key of csv is text",
        PROJECT.replace("sales", "other") + '  csv: {null: "", header: false}\n',
        1,
    ),
    (
        "external project",
        PROJECT.replace("sales", "ext").replace(
            "  target: {table: public.sales}", "  external: true"
        )
        + "---\n"
        + schedule(CRON, project="ext"),
        2,
    ),
]


@pytest.mark.parametrize(("text", "count"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_files_load(text: str, count: int) -> None:
    """Valid files give their documents and no finding."""
    loaded = load(text)
    assert loaded.ok, [str(f) for f in loaded.findings]
    assert len(loaded.documents) == count + 1  # the project file


def test_documents_remember_where_they_start() -> None:
    """Each document knows its file (relative, posix) and the line and column of its first key."""
    text = "# a comment\n" + schedule(CRON, name="a") + "---\n\n" + schedule(CRON, name="b")
    loaded = load_files([("team/s.yaml", text.encode())], display_root="x")
    places = [(d.source, d.line, d.column) for d in loaded.documents]
    assert places == [("team/s.yaml", 2, 1), ("team/s.yaml", 11, 1)]
    assert loaded.files == ("team/s.yaml",)


def test_example_folder_is_valid() -> None:
    """The shipped schedules.d is valid: the original API's daily schedule and the quickstart's;
    the SFTP example (the original's other schedule) is valid on its own."""
    files = sorted((p.name, p.read_bytes()) for p in EXAMPLES.glob("*.yaml"))
    loaded = load_files(files)
    assert loaded.ok, [str(f) for f in loaded.findings]
    schedules = {
        d.document.metadata.name: d.document
        for d in loaded.documents
        if isinstance(d.document, ScheduleDocument)
    }
    assert set(schedules) == {"daily-sales-import", "quickstart-sales-import"}
    assert schedules["daily-sales-import"].spec.timezone == "America/New_York"
    assert any(isinstance(d.document, ProjectDocument) for d in loaded.documents)
    sftp = load_files([("customers.yaml", SFTP_EXAMPLE.read_bytes())])
    assert sftp.ok, [str(f) for f in sftp.findings]
    (schedule,) = [d.document for d in sftp.documents if isinstance(d.document, ScheduleDocument)]
    assert (schedule.metadata.name, schedule.spec.interval) == ("hourly-customer-import", 7200)


def _billion_laughs() -> bytes:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode()


HOSTILE = [
    ("billion laughs", _billion_laughs(), f"more than {MAX_NODES} values"),
    ("deep lists", b"[" * 10_000 + b"]" * 10_000, f"nested deeper than {MAX_DEPTH} levels"),
    ("deep mappings", b"{a: " * 10_000 + b"1" + b"}" * 10_000, "nested deeper than"),
    (
        "deep block mappings",
        b"".join(b" " * i + b"a:\n" for i in range(200)) + b" " * 200 + b"1\n",
        "nested deeper than",
    ),
    ("long flat list", b"a: [" + b"1," * 200_000 + b"1]\n", f"more than {MAX_NODES} values"),
]


@pytest.mark.parametrize(
    ("data", "fragment"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_documents_are_refused_quickly(data: bytes, fragment: str) -> None:
    """Alias bombs, deep nesting and huge documents give a finding at once, never a hang."""
    start = time.perf_counter()
    loaded = load(data)
    elapsed = time.perf_counter() - start
    assert elapsed < 2, "a hang guard: this takes milliseconds"
    assert [fragment in f.message for f in loaded.findings] == [True], loaded.findings


ENCODING = [
    ("not UTF-8", b"apiVersion: reconciler/v1\nkind: \xff\n", "2:7", "not UTF-8 (byte 0xff)"),
    ("latin-1 after text", "a: caf\u00e9\n".encode("latin-1"), "1:7", "save the file as UTF-8"),
    ("UTF-16", "a: 1\n".encode("utf-16"), "1:1", "not UTF-8"),
]


@pytest.mark.parametrize(
    ("data", "where", "fragment"), [c[1:] for c in ENCODING], ids=[c[0] for c in ENCODING]
)
def test_non_utf8_is_located(data: bytes, where: str, fragment: str) -> None:
    """Bytes that are not UTF-8 give a finding at the line of the first bad byte."""
    (finding,) = load(data).findings
    assert str(finding).startswith(f"schedules.d/s0.yaml:{where}: ")
    assert fragment in finding.message


def test_oversized_file_is_a_finding() -> None:
    """A file over the size limit is reported as a whole, not parsed."""
    (finding,) = load(b"#" * (MAX_FILE_BYTES + 1)).findings
    assert (finding.line, finding.column) == (0, 0)
    assert str(finding) == "schedules.d/s0.yaml: larger than 1 MiB: split it into smaller files"


SECRET = "hunter2-Sekr1t"
SECRETS = [
    ("literal password", f"  sftp_override: {{password: {SECRET}}}"),
    ("quoted literal password", f'  sftp_override: {{password: "{SECRET}"}}'),
    ("password as a list", f"  sftp_override: {{password: [{SECRET}]}}"),
    ("password in a literal block", f"  sftp_override:\n    password: |\n      {SECRET}"),
    ("unknown key beside the password", f"  sftp_override: {{passwd: {SECRET}}}"),
    ("number as password", "  sftp_override: {password: 1234567}"),
    ("YAML 1.1 word as password", "  sftp_override: {password: yes}"),
    ("base 60 as password", "  sftp_override: {password: 12:34:56}"),
    ("leading zero as password", "  sftp_override: {password: 0123456}"),
]


@pytest.mark.parametrize("spec_line", [c[1] for c in SECRETS], ids=[c[0] for c in SECRETS])
def test_literal_secrets_are_refused_without_being_repeated(spec_line: str) -> None:
    """A literal password is a finding, and no finding repeats its value."""
    loaded = load(schedule(CRON, spec_line))
    assert not loaded.ok
    output = "\n".join(str(f) for f in loaded.findings)
    for value in (SECRET, "1234567", "yes", "12:34:56", "0123456", "45296"):
        assert value not in output


def test_literal_database_url_is_refused_without_being_repeated() -> None:
    """A literal database URL (with its password) is refused and never echoed."""
    url = "postgresql://app:pa55word@db.example.com/sales"
    text = PROJECT.replace("{table: public.sales}", f"{{table: t, database_url: {url}}}")
    text = text.replace("name: sales", "name: other")
    (finding,) = load(text).findings
    assert "secrets must be references like ${" in finding.message
    assert "pa55word" not in str(finding)
    assert "db.example.com" not in str(finding)


def test_display_root_prefixes_paths() -> None:
    """Findings name files under the display root; without one, by their relative path."""
    data = [("a/b.yaml", b"- 1\n")]
    assert load_files(data, display_root="conf/").findings[0].path == "conf/a/b.yaml"
    assert load_files(data).findings[0].path == "a/b.yaml"
    assert load_files(data, display_root=".").findings[0].path == "a/b.yaml"


def test_documents_after_a_refused_one_are_still_checked() -> None:
    """A document refused while parsing (limit, bad alias) leaves the file's next ones loaded."""
    refused = _billion_laughs().decode() + "---\nx: *nope\n---\n"
    loaded = load(refused + schedule(CRON, name="after") + "---\n" + schedule("  interval: 1"))
    assert [f.line for f in loaded.findings] == [5, 11, 27]
    assert [d.document.metadata.name for d in loaded.documents] == ["sales", "after"]


def test_the_interval_minimum_is_found_at_its_field_with_the_other_errors() -> None:
    """A short interval is an error of spec.interval, reported with the document's others."""
    loaded = load(schedule("  interval: 10m", "  timezone: Mars/Base", "  enabled: maybe"))
    shown = [str(f) for f in loaded.findings]
    assert len(shown) == 3, shown
    assert shown[0].startswith("schedules.d/s0.yaml:7:13: spec.interval: interval 600 s is ")
    assert "spec.timezone" in shown[1]
    assert "spec.enabled" in shown[2]


def test_syntax_error_keeps_the_names_declared_before_it() -> None:
    """A project in a document cut short by a syntax error still counts as declared."""
    broken = PROJECT.replace("name: sales", "name: cut") + "bad: [\n"
    loaded = load(broken, schedule(CRON, project="cut"))
    assert [str(f) for f in loaded.findings] == [
        "schedules.d/s0.yaml:8:1: invalid YAML: did not find expected node content"
    ]


def project(table: str, *spec: str) -> str:
    """A Project 'other' whose ``target.table`` value starts at line 6, column 19."""
    text = PROJECT.replace("{table: public.sales}", f"{{table: {table}}}")
    return text.replace("name: sales", "name: other") + "".join(line + "\n" for line in spec)


DIGITS = "9" * 5000
NUL = "contains a NUL character ('\\0'), which PostgreSQL cannot store: remove it"
HUGE = "this number is far too large for any setting (none takes more than 2147483647)"
INT4 = "a duration must be at most 2147483647 seconds (about 68 years)"
TOO_LONG = (
    "is not a duration: it is %d characters long, and a duration takes at most 64; "
    "write one such as '2h' or '1h30m'"
)
ZONE_HINT = "use an IANA name such as 'UTC' or 'Europe/Berlin'"
BAD_URL = (
    "spec.callback_url: must be a valid URL: check the host (an IPv6 address goes in "
    "[brackets]) and the port (a number up to 65535)"
)
CREDENTIALS = (
    "spec.callback_url: must not contain credentials ('user:password@'): they would be stored "
    "and shown in plans; remove them and have the receiver check the webhook-signature header "
    "(set RECONCILER_WEBHOOK_SECRET)"
)
OWN_TABLE = (
    "is one of reconcile's own tables (its schedules, jobs, record of imported files or load "
    "stage), which an import would corrupt: import into a table of your own"
)

DATABASE_REJECTS = [
    # (id, text, "line:col", the whole message): what the database or the run would refuse
    ("interval past integer", schedule("  interval: 2147483648"), "7:13",
     f"spec.interval: {INT4}, got 2147483648"),
    ("interval past integer in hours", schedule("  interval: 596524h"), "7:13",
     f"spec.interval: {INT4}, got '596524h'"),
    ("interval past integer in parts", schedule("  interval: 24855d3h15m"), "7:13",
     f"spec.interval: {INT4}, got '24855d3h15m'"),
    ("grace past integer", schedule(CRON, "  misfire_grace: 2147483648"), "8:18",
     f"spec.misfire_grace: {INT4}, got 2147483648"),
    ("grace past integer in seconds", schedule(CRON, '  misfire_grace: "2147483648s"'), "8:18",
     f"spec.misfire_grace: {INT4}, got '2147483648s'"),
    ("5000 digits", schedule("  interval: " + DIGITS), "7:13", HUGE),
    ("5000 digits, signed", schedule(CRON, "  misfire_grace: -" + DIGITS), "8:18", HUGE),
    ("5000 digits, tagged", schedule(CRON, "  sftp_override: {port: !!int " + DIGITS + "}"),
     "8:25", HUGE),
    ("hexadecimal past 30 digits", schedule(CRON, "  sftp_override: {port: 0x" + "f" * 31 + "}"),
     "8:25", HUGE),
    ("5000 digits, quoted", schedule(f'  interval: "{DIGITS}"'), "7:13",
     f"spec.interval: '{'9' * 37}...' {TOO_LONG % 5000}"),
    ("5000 digits in hours", schedule(f"  interval: {DIGITS}h"), "7:13",
     f"spec.interval: '{'9' * 37}...' {TOO_LONG % 5001}"),
    ("65 digits, quoted", schedule(f'  interval: "{DIGITS[:65]}"'), "7:13",
     f"spec.interval: '{'9' * 37}...' {TOO_LONG % 65}"),
    ("64 digits, quoted", schedule(f'  interval: "{DIGITS[:64]}"'), "7:13",
     f"spec.interval: {INT4}, got '{'9' * 37}...'"),
    ("5000 digits in a cron", schedule(f'  cron: "{DIGITS} * * * *"'), "7:9",
     f"spec.cron: '{'9' * 37}...': minute {'9' * 37}... is out of range 0-59"),
    ("a digit that is not ASCII", schedule("  interval: '\u00b2'"), "7:13",
     "spec.interval: '\u00b2' is not a duration: write whole seconds or units d, h, m, s "
     "such as '2h', '90m' or '1h30m'"),
    ("cron longer than its column",
     schedule('  cron: "' + ",".join(str(m) for m in range(60) if m % 3 != 2) + ' * * * *"'),
     "7:9",
     "spec.cron: '0,1,3,4,6,7,9,10,12,13,15,16,18,19,21...' is 120 characters even in its "
     "shortest spelling; the database stores at most 100: split it into two schedules"),
    ("NUL in a value", schedule(CRON, '  timezone: "U\\0TC"'), "8:13", NUL),
    ("NUL as \\x00 in a list", schedule(CRON, '  local_files: ["a\\x00b.csv"]'), "8:17", NUL),
    ("NUL as \\u0000 in a key", schedule(CRON, '  "ena\\u0000bled": true'), "8:3", NUL),
    ("NUL in a name", schedule(CRON, name='"da\\0ily"'), "4:9", NUL),
    ("NUL as the CSV null", project("t", '  csv: {null: "\\0"}'), "7:15", NUL),
    ("NUL in an SFTP pattern", schedule(CRON, '  sftp_override: {pattern: "*\\0.csv"}'), "8:28",
     NUL),
    ("a name with a trailing newline", schedule(CRON, name='"daily\\n"'), "4:9",
     "metadata.name: 'daily\\n' is not a valid name: use letters, digits, '_', '-' and '.', "
     "starting with a letter or digit, at most 255 characters"),
    ("a table with a trailing newline", project('"sales\\n"'), "6:19",
     "spec.target.table: 'sales\\n' is not a plain SQL identifier "
     "(letters, digits, '_', at most 63 characters)"),
    ("a reference with a trailing newline", project("t", '  sftp: {host: h, username: u, '
     'password: "${P}\\n"}'), "7:42",
     "spec.sftp.password: secrets must be references like ${SFTP_PASSWORD}, never literal "
     "values; put the value in an environment variable and reference it here"),
    ("a region of the tz database", schedule(CRON, "  timezone: America"), "8:13",
     "spec.timezone: 'America' is a region, not a time zone: name a zone in it, such as "
     "'America/New_York' or 'Europe/Berlin'"),
    ("another region", schedule(CRON, "  timezone: US"), "8:13",
     "spec.timezone: 'US' is a region, not a time zone: name a zone in it, such as "
     "'America/New_York' or 'Europe/Berlin'"),
    ("a path out of the tz database", schedule(CRON, "  timezone: ../../etc/passwd"), "8:13",
     f"spec.timezone: unknown time zone '../../etc/passwd': {ZONE_HINT}"),
    ("an absolute path", schedule(CRON, "  timezone: /etc/passwd"), "8:13",
     f"spec.timezone: unknown time zone '/etc/passwd': {ZONE_HINT}"),
    ("an empty zone", schedule(CRON, "  timezone: ''"), "8:13",
     f"spec.timezone: unknown time zone '': {ZONE_HINT}"),
    ("a file beside the zones", schedule(CRON, "  timezone: zone.tab"), "8:13",
     f"spec.timezone: unknown time zone 'zone.tab': {ZONE_HINT}"),
    ("a file of the tzdata package", schedule(CRON, "  timezone: __init__.py"), "8:13",
     f"spec.timezone: unknown time zone '__init__.py': {ZONE_HINT}"),
    ("a zone name longer than its column", schedule(CRON, "  timezone: " + "A" * 300), "8:13",
     f"spec.timezone: unknown time zone '{'A' * 37}...': {ZONE_HINT}"),
    ("posixrules", schedule(CRON, "  timezone: posixrules"), "8:13",
     f"spec.timezone: 'posixrules' is a default rule of the tz code, not a zone: {ZONE_HINT}"),
    ("localtime", schedule(CRON, "  timezone: localtime"), "8:13",
     f"spec.timezone: 'localtime' is this machine's zone, not a named one: {ZONE_HINT}"),
    ("a right/ zone", schedule(CRON, "  timezone: right/UTC"), "8:13",
     "spec.timezone: 'right/UTC': the posix/ and right/ copies of the zones exist on some "
     "systems only; write the zone without the prefix"),
    ("an unclosed IPv6 host", schedule(CRON, "  callback_url: 'http://[::1/'"), "8:17", BAD_URL),
    ("a port past 65535", schedule(CRON, "  callback_url: http://h.example:99999/"), "8:17",
     BAD_URL),
    ("a port that is not a number", schedule(CRON, "  callback_url: http://h.example:x/"),
     "8:17", BAD_URL),
    ("port 0", schedule(CRON, "  callback_url: http://h.example:0/"), "8:17",
     "spec.callback_url: port 0 cannot be sent to: give the receiver's port, or none"),
    ("no host", schedule(CRON, "  callback_url: 'https:///hook'"), "8:17",
     "spec.callback_url: must be an absolute http:// or https:// URL with a host"),
    ("a control character", schedule(CRON, '  callback_url: "https://h.example/\\a"'), "8:17",
     "spec.callback_url: must be printable ASCII without spaces: percent-encode other "
     "characters (a space as %20) and write an international host name in its xn-- form"),
    ("not ASCII", schedule(CRON, "  callback_url: https://h.example/caf\u00e9"), "8:17",
     "spec.callback_url: must be printable ASCII without spaces: percent-encode other "
     "characters (a space as %20) and write an international host name in its xn-- form"),
    ("not http", schedule(CRON, "  callback_url: 'ftp://h.example/'"), "8:17",
     "spec.callback_url: must be an http:// or https:// URL"),
    ("user and password", schedule(CRON, "  callback_url: https://user:pa55@h.example/hook"),
     "8:17", CREDENTIALS),
    ("a token as user", schedule(CRON, "  callback_url: https://t0ken@h.example/hook"), "8:17",
     CREDENTIALS),
    ("the management ledger", project("public.cpi_imported_files"), "6:19",
     f"spec.target.table: public.cpi_imported_files {OWN_TABLE}"),
    ("the ledger of another database", project("reconcile_imported_files"), "6:19",
     f"spec.target.table: reconcile_imported_files {OWN_TABLE}"),
    ("the schedules, in another schema", project("audit.cpi_schedules"), "6:19",
     f"spec.target.table: audit.cpi_schedules {OWN_TABLE}"),
    ("the jobs, upper case", project("CPI_JOBS"), "6:19",
     f"spec.target.table: CPI_JOBS {OWN_TABLE}"),
    ("the projects", project("cpi_projects"), "6:19",
     f"spec.target.table: cpi_projects {OWN_TABLE}"),
    ("the load stage", project("_reconcile_stage"), "6:19",
     f"spec.target.table: _reconcile_stage {OWN_TABLE}"),
    ("a system catalog", project("pg_catalog.pg_authid"), "6:19",
     "spec.target.table: pg_catalog.pg_authid is in pg_catalog, PostgreSQL's own catalog "
     "schema: import into a table of your own, such as public.pg_authid"),
    ("a catalog, unqualified", project("pg_authid"), "6:19",
     "spec.target.table: pg_authid would name a system catalog (pg_catalog is searched first): "
     "write the schema, such as public.pg_authid, if it is a table of your own"),
    ("information_schema", project("information_schema.tables"), "6:19",
     "spec.target.table: information_schema.tables is in information_schema, PostgreSQL's own "
     "catalog schema: import into a table of your own, such as public.tables"),
    ("pg_toast", project("pg_toast.chunks"), "6:19",
     "spec.target.table: pg_toast.chunks is in pg_toast, PostgreSQL's own catalog schema: "
     "import into a table of your own, such as public.chunks"),
    ("pg_temp", project("pg_temp.t"), "6:19",
     "spec.target.table: pg_temp.t is in pg_temp, PostgreSQL's own catalog schema: "
     "import into a table of your own, such as public.t"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [c[1:] for c in DATABASE_REJECTS],
    ids=[c[0] for c in DATABASE_REJECTS],
)
def test_what_the_database_or_the_run_would_refuse_is_a_finding(
    text: str, where: str, message: str
) -> None:
    """Values past a column's range or type, or aimed at the tool's own tables, are findings."""
    found = [str(f) for f in load(text).findings]
    assert found == [f"schedules.d/s0.yaml:{where}: {message}"]


def test_credentials_in_a_callback_url_are_never_repeated() -> None:
    """A callback URL is never quoted back, whatever is wrong with it."""
    for url in ("https://user:pa55word@h.example/", "ftp://user:pa55word@h.example/"):
        findings = load(schedule(CRON, f"  callback_url: '{url}'")).findings
        assert findings
        assert all("pa55word" not in str(f) for f in findings)


AT_THE_LIMITS = [
    ("the largest interval", schedule("  interval: 2147483647")),
    ("the largest interval in parts", schedule("  interval: 24855d3h14m7s")),
    ("leading zeros are not digits", schedule("  interval: '000000000000003600'")),
    ("an IPv6 callback", schedule(CRON, "  callback_url: 'https://[::1]:8443/hook'")),
    ("a query in the callback", schedule(CRON, "  callback_url: http://h.example/x?a=1&b=%20")),
    ("a table of your own named like a catalog", project("public.pg_things")),
    ("a table named like ours, but longer", project("audit.cpi_jobs_archive")),
    ("the longest zone name", schedule(CRON, "  timezone: America/Argentina/ComodRivadavia")),
    ("a zone with a sign", schedule(CRON, "  timezone: Etc/GMT+5")),
    ("a step past the field", schedule(f'  cron: "*/{DIGITS} * * * *"')),
]


@pytest.mark.parametrize("text", [c[1] for c in AT_THE_LIMITS], ids=[c[0] for c in AT_THE_LIMITS])
def test_values_at_the_limits_load(text: str) -> None:
    """Values just inside the database's limits, and safe look-alikes, are valid."""
    loaded = load(text)
    assert loaded.ok, [str(f) for f in loaded.findings]


def test_a_step_past_the_field_keeps_the_first_value() -> None:
    """``*/<5000 digits>`` means the field's first value, without converting the digits."""
    document = load(schedule(f'  cron: "*/{DIGITS} * * * *"')).documents[-1].document
    assert isinstance(document, ScheduleDocument)
    assert document.spec.cron == "0 * * * *"


MARKER = "S3CRET-" + "".join(f"{i:03d}" for i in range(100))  # no 41 characters repeat
ECHOES = [
    # (id, a document with MARKER somewhere a finding may quote it)
    ("the whole file", MARKER),
    ("a multi-line file", "\n".join(f"LINE{i}={MARKER}" for i in range(5))),
    ("a list item", f"- {MARKER}\n"),
    ("apiVersion", schedule(CRON).replace("reconciler/v1", MARKER)),
    ("kind", schedule(CRON).replace("kind: Schedule", f"kind: {MARKER}")),
    ("a name", schedule(CRON, name=MARKER)),
    ("a duplicate name", 2 * (schedule(CRON, name="a" + MARKER) + "---\n")),
    ("a project", schedule(CRON, project=MARKER)),
    ("an unknown key", schedule(CRON, f"  {MARKER}: 1")),
    ("a duplicate key", schedule(CRON, f"  {MARKER}: 1", f"  {MARKER}: 2")),
    ("a cron", schedule(f'  cron: "{MARKER} * * * *"')),
    ("a cron field", schedule(f'  cron: "0 {MARKER} * * *"')),
    ("a cron step", schedule(f'  cron: "*/{MARKER} * * * *"')),
    ("a cron macro", schedule(f'  cron: "@{MARKER}"')),
    ("a duration", schedule(f"  interval: {MARKER}")),
    ("a time zone", schedule(CRON, f"  timezone: {MARKER}")),
    ("a boolean", schedule(CRON, f"  enabled: {MARKER}")),
    ("a callback", schedule(CRON, f"  callback_url: ftp://h.example/{MARKER}")),
    ("a table", project(MARKER)),
    ("a column", project("t", f"  csv: {{delimiter: {MARKER}}}")),
    ("a tag", schedule(CRON, f"  timezone: !{MARKER} UTC")),
    ("an alias", schedule(f"  cron: *{MARKER}")),
    ("underscores", schedule(CRON, "  misfire_grace: 1_" + "0" * 300)),
    ("base 60", schedule(CRON, "  misfire_grace: 1:" + ":".join(["30"] * 100))),
]  # fmt: skip


@pytest.mark.parametrize("text", [c[1] for c in ECHOES], ids=[c[0] for c in ECHOES])
def test_findings_quote_at_most_40_characters_of_a_value(text: str) -> None:
    """No finding repeats more than 40 characters of what was written, wherever it was."""
    findings = [str(f) for f in load(text).findings]
    assert findings
    for finding in findings:
        assert len(finding) < 300, finding
        chunks = {MARKER[i : i + 41] for i in range(len(MARKER) - 40)}
        assert not any(chunk in finding for chunk in chunks), finding


def test_a_file_that_is_not_yaml_is_never_printed() -> None:
    """A symlinked ``.env`` (one plain scalar of many lines) is named, and none of it shown."""
    secret = "API_KEY=sk-live-0123456789\nDB_PASSWORD=hunter2\nexport TOKEN=abc\n"
    (finding,) = load(secret).findings
    assert str(finding) == (
        "schedules.d/s0.yaml:1:1: a document must be a mapping with apiVersion, kind, metadata "
        "and spec, not a single value (is this a YAML file?)"
    )


def test_a_syntax_error_hides_nothing_after_its_document() -> None:
    """Documents after the one a syntax error cut short are still read and checked, each
    finding at its own line of the file."""
    broken = schedule(CRON, name="a") + "  enabled: [\n"
    after = schedule(CRON, "  enabeld: true", name="b")
    loaded = load(broken + "---\n" + after + "---\n" + schedule("  interval: 2h", name="c"))
    shown = [str(f) for f in loaded.findings]
    assert shown[0].startswith("schedules.d/s0.yaml:9:1: invalid YAML"), shown
    assert shown[1] == (
        "schedules.d/s0.yaml:17:3: spec: unknown key 'enabeld' (did you mean 'enabled'?)"
    ), shown
    assert len(shown) == 2
    assert [d.document.metadata.name for d in loaded.documents] == ["sales", "c"]


def test_syntax_errors_in_several_documents_are_each_reported() -> None:
    """Each broken document is reported at its line, up to the file's resume limit."""
    part = "x: [\n---\n"
    loaded = load(part * (MAX_RESUMES + 5))
    lines = [f.line for f in loaded.findings]
    assert lines == [2 * i + 2 for i in range(MAX_RESUMES + 1)]
