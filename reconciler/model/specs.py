"""The documents users write in ``schedules.d/``: frozen pydantic models with unknown keys rejected.

``model.loading`` turns YAML into these; ``model.plans`` turns them into desired rows; ``reconcile
schema`` prints their JSON Schema. Everything here is pure: no I/O, no clock, no environment
(``ZoneInfo`` reads the time zone database, which is data, not state).
Secrets are ``${VAR}`` references, kept verbatim; only the import engine resolves them.

What validates here also fits the database: durations (``model.durations``) fit PostgreSQL's
``integer``, the canonical cron its ``VARCHAR(100)``, a time zone its ``VARCHAR(50)``; and a target
is never a system catalog or one of reconcile's own tables (``reserved_target``, which the import
engine checks again).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    model_validator,
)

from reconciler.model import destinations, timing
from reconciler.model.durations import (
    DURATION_TEXT,
    INT4_MAX,
    RETRIES_MAX,
    RETRY_BACKOFF_DEFAULT,
    RETRY_DELAY_MAX,
    RetryBackoff,
    Seconds,
    Timeout,
    parse_duration,
)
from reconciler.model.scalars import excerpt

__all__ = [
    "API_VERSION",
    "INT4_MAX",
    "MIN_INTERVAL_SECONDS",
    "TOOL_TABLES",
    "CsvDialect",
    "Delivery",
    "Document",
    "Metadata",
    "ProjectDocument",
    "ProjectSpec",
    "ScheduleDocument",
    "ScheduleSpec",
    "Sftp",
    "SftpOverride",
    "Target",
    "document_adapter",
    "parse_duration",
    "reserved_target",
]

API_VERSION = "reconciler/v1"
MIN_INTERVAL_SECONDS = 3600  # the seed's CHECK (interval_seconds >= 3600)
# Tables reconcile itself writes (store/schema.sql, store.ledger, the COPY engine's stage): an
# import into one would corrupt schedules, jobs or the exactly-once record.
TOOL_TABLES = frozenset(
    {
        "cpi_projects",
        "cpi_schedules",
        "cpi_jobs",
        "cpi_imported_files",
        "cpi_daemon_state",
        "reconcile_imported_files",
        "_reconcile_stage",
    }
)
_CRON_MAX = 100  # cpi_schedules.cron_expression VARCHAR(100)
_ZONE_MAX = 50  # cpi_schedules.timezone VARCHAR(50)

# fullmatch everywhere: '$' would let a trailing newline through ("sales\n" is another table).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_SECRET_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
# IANA zone names: ASCII letters, digits, '_', '-', '+' between slashes. This leaves out what the
# database's folder holds beside the zones (zone.tab, tzdata.zi, the tzdata package's files).
_ZONE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z][A-Za-z0-9_+-]*)*")
_NOT_ZONES = {
    "localtime": "'localtime' is this machine's zone, not a named one",
    "posixrules": "'posixrules' is a default rule of the tz code, not a zone",
}
_ZONE_HINT = "use an IANA name such as 'UTC' or 'Europe/Berlin'"
_SYSTEM_SCHEMAS = ("pg_", "information_schema")


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{excerpt(value)} is not a valid name: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, at most 255 characters"
        )
    return value


def _secret_ref(value: str) -> str:
    if not _SECRET_REF.fullmatch(value):
        raise ValueError(
            "secrets must be references like ${SFTP_PASSWORD}, never literal values; "
            "put the value in an environment variable and reference it here"
        )
    return value


def _identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{excerpt(value)} is not a plain SQL identifier "
            "(letters, digits, '_', at most 63 characters)"
        )
    return value


def reserved_target(table: str) -> str | None:
    """Why ``table`` (``name`` or ``schema.name``) must never receive an import; None if it may.

    Refused: reconcile's own tables (``TOOL_TABLES``) in any schema, any table in a system schema
    (``pg_*``, ``information_schema``), and an unqualified ``pg_*`` name, which finds a catalog
    first because ``pg_catalog`` is always searched before the path. Case is ignored, so that a
    quoted spelling cannot slip past. The loader checks every target with this; the import engine
    checks again against what the database holds.
    """
    schema, _, name = table.rpartition(".")
    if name.lower() in TOOL_TABLES:
        return (
            f"{table} is one of reconcile's own tables (its schedules, jobs, record of imported "
            "files or load stage), which an import would corrupt: import into a table of your own"
        )
    if schema.lower().startswith(_SYSTEM_SCHEMAS):
        return (
            f"{table} is in {schema}, PostgreSQL's own catalog schema: "
            "import into a table of your own, such as public." + name
        )
    if not schema and name.lower().startswith("pg_"):
        return (
            f"{table} would name a system catalog (pg_catalog is searched first): "
            f"write the schema, such as public.{name}, if it is a table of your own"
        )
    return None


def _table(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2:
        raise ValueError(f"{excerpt(value)}: write a table as 'name' or 'schema.name'")
    for part in parts:
        _identifier(part)
    reason = reserved_target(value)
    if reason is not None:
        raise ValueError(reason)
    return value


def _timezone(value: str) -> str:
    shown = excerpt(value)
    if value in _NOT_ZONES:
        raise ValueError(f"{_NOT_ZONES[value]}: {_ZONE_HINT}")
    if value.startswith(("posix/", "right/")):
        raise ValueError(
            f"{shown}: the posix/ and right/ copies of the zones exist on some systems only; "
            "write the zone without the prefix"
        )
    if len(value) > _ZONE_MAX or not _ZONE_KEY.fullmatch(value):
        raise ValueError(f"unknown time zone {shown}: {_ZONE_HINT}")
    try:
        ZoneInfo(value)
    except IsADirectoryError:  # 'America' is a folder of the database (3.13 says "not found")
        raise ValueError(
            f"{shown} is a region, not a time zone: name a zone in it, "
            "such as 'America/New_York' or 'Europe/Berlin'"
        ) from None
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {shown}: {_ZONE_HINT}") from None
    return value


def _callback_url(value: str) -> str:
    """An absolute http(s) URL the standard library can send to; never quoted back (tokens)."""
    if not value.isascii() or any(char.isspace() or not char.isprintable() for char in value):
        raise ValueError(
            "must be printable ASCII without spaces: percent-encode other characters "
            "(a space as %20) and write an international host name in its xn-- form"
        )
    try:
        parts = urlsplit(value)
        port = parts.port  # parsed lazily: a bad port raises only here
    except ValueError:
        raise ValueError(
            "must be a valid URL: check the host (an IPv6 address goes in [brackets]) "
            "and the port (a number up to 65535)"
        ) from None
    if "@" in parts.netloc:
        raise ValueError(
            "must not contain credentials ('user:password@'): they would be stored and shown "
            "in plans; remove them and have the receiver check the webhook-signature header "
            "(set RECONCILER_WEBHOOK_SECRET)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    if port == 0:
        raise ValueError("port 0 cannot be sent to: give the receiver's port, or none")
    refused = destinations.literal_refusal(parts.hostname)
    if refused:  # a host name is checked after resolving, when the callback is sent
        raise ValueError(f"{refused}; callbacks are never sent there")
    return value


def _single_char(value: str) -> str:
    if len(value) != 1:
        raise ValueError(f"{excerpt(value)} must be exactly one character")
    return value


def _cron(value: str) -> str:
    canonical = timing.normalize_cron(value)
    if len(canonical) > _CRON_MAX:
        raise ValueError(
            f"{excerpt(value)} is {len(canonical)} characters even in its shortest spelling; "
            f"the database stores at most {_CRON_MAX}: split it into two schedules"
        )
    return canonical


Name = Annotated[StrictStr, AfterValidator(_name)]
SecretRef = Annotated[StrictStr, AfterValidator(_secret_ref)]
Identifier = Annotated[StrictStr, AfterValidator(_identifier)]
TableName = Annotated[StrictStr, AfterValidator(_table)]
TimeZone = Annotated[StrictStr, AfterValidator(_timezone)]
Char = Annotated[StrictStr, AfterValidator(_single_char)]


def _interval(seconds: int) -> int:
    """A rule of the field itself, so it is located there and reported with the others."""
    if seconds < MIN_INTERVAL_SECONDS:
        raise ValueError(
            f"interval {seconds} s is shorter than the minimum of {MIN_INTERVAL_SECONDS} s (1h); "
            "use a cron expression for finer timing"
        )
    return seconds


Interval = Annotated[Seconds, AfterValidator(_interval)]
Cron = Annotated[StrictStr, AfterValidator(_cron)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]
# The pattern is for editors; the validator is what the sender (urllib) needs.
CallbackUrl = Annotated[StrictStr, Field(pattern=r"^https?://\S+$"), AfterValidator(_callback_url)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Metadata(_Frozen):
    """The identity of a document: ``kind`` plus ``name`` is unique across the folder."""

    name: Name


class Target(_Frozen):
    """Where a project's CSV rows go."""

    database_url: SecretRef | None = Field(
        default=None, description="A ${VAR} reference; default: the management database."
    )
    table: TableName
    columns: tuple[Identifier, ...] | None = Field(
        default=None, min_length=1, description="Default: the table's columns, in order."
    )
    mode: Literal["append", "replace", "upsert"] = "append"
    key: tuple[Identifier, ...] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _key_with_upsert(self) -> Target:
        if self.mode == "upsert" and not self.key:
            raise ValueError("mode 'upsert' needs 'key': the columns that identify a row")
        if self.mode != "upsert" and self.key:
            raise ValueError(f"'key' is only used with mode 'upsert', not {self.mode!r}")
        return self


class CsvDialect(_Frozen):
    """The CSV dialect, mapped one to one onto PostgreSQL COPY options."""

    header: StrictBool = True
    delimiter: Char = ","
    quote: Char = '"'
    escape: Char | None = Field(default=None, description="Default: the quote character.")
    null: StrictStr = ""
    encoding: NonEmpty = "UTF8"


class Sftp(_Frozen):
    """An SFTP source: where files are fetched and what happens to them afterwards."""

    host: NonEmpty
    port: Port = 22
    username: NonEmpty
    password: SecretRef | None = None
    private_key_file: NonEmpty | None = None
    known_hosts_file: NonEmpty | None = Field(
        default=None, description="Default: ~/.ssh/known_hosts; unknown host keys are refused."
    )
    remote_dir: NonEmpty = "."
    pattern: NonEmpty = "*.csv"
    after_import: Literal["keep", "delete", "move"] = "keep"
    archive_dir: NonEmpty | None = None
    follow_links_outside: StrictBool = Field(
        default=False,
        description="Import files through symbolic links that lead outside remote_dir; "
        "by default such links are skipped with a warning.",
    )

    @model_validator(mode="after")
    def _archive_with_move(self) -> Sftp:
        if self.after_import == "move" and not self.archive_dir:
            raise ValueError("after_import 'move' needs 'archive_dir'")
        return self


class SftpOverride(_Frozen):
    """Fields of the project's ``sftp`` that one schedule replaces."""

    host: NonEmpty | None = None
    port: Port | None = None
    username: NonEmpty | None = None
    password: SecretRef | None = None
    private_key_file: NonEmpty | None = None
    known_hosts_file: NonEmpty | None = None
    remote_dir: NonEmpty | None = None
    pattern: NonEmpty | None = None
    after_import: Literal["keep", "delete", "move"] | None = None
    archive_dir: NonEmpty | None = None


def _marker(value: str) -> str:
    plain = value.replace("{name}", "")
    problem = None
    if "/" in value or "\\" in value or value in (".", ".."):
        problem = "must be a file name beside the data file, not a path"
    elif value == "{name}":
        problem = "would make every file its own marker: add a suffix, as in '{name}.done'"
    elif "{" in plain or "}" in plain:
        problem = "may hold no placeholder but {name}"
    elif any(c in value for c in "*?["):
        problem = "is a name, not a pattern: no *, ? or ["
    elif value != value.strip() or not value.strip():
        problem = "must not begin or end with a space"
    if problem:
        raise ValueError(
            f"{excerpt(value)} {problem} (such as '{{name}}.done', one marker per file, or "
            "'_SUCCESS', one for the folder)"
        )
    return value


class Delivery(_Frozen):
    """When a delivered file is complete, in which order a run commits files, and whether an
    empty file may empty a replaced table."""

    settle: Seconds | None = Field(
        default=None,
        description="A file is taken once its modification time is this old (default: "
        "RECONCILER_SETTLE_SECONDS, 10 s); not used with ready_marker.",
    )
    ready_marker: Annotated[StrictStr, AfterValidator(_marker)] | None = Field(
        default=None,
        description="Take a file only once this file exists beside it: '{name}.done' (one per "
        "file, {name} is the file's name) or '_SUCCESS' (one for the folder).",
    )
    order: Literal["name", "mtime"] = Field(
        default="name", description="The order a run commits its files in (mtime: oldest first)."
    )
    allow_empty: StrictBool = Field(
        default=False,
        description="Let an empty file (no rows) replace a table's content (mode replace).",
    )


class ProjectSpec(_Frozen):
    """A project: the target table, the CSV dialect and the default SFTP source.

    ``external: true`` declares a project that exists in the database but is managed elsewhere
    (the old API, another folder), so schedules here may reference it.
    """

    external: StrictBool = False
    target: Target | None = None
    csv: CsvDialect = CsvDialect()
    sftp: Sftp | None = None
    delivery: Delivery = Delivery()

    @model_validator(mode="after")
    def _target_unless_external(self) -> ProjectSpec:
        changed = self.csv != CsvDialect() or self.delivery != Delivery()
        if self.external and (self.target or self.sftp or changed):
            raise ValueError("an external project is managed elsewhere: give it no other fields")
        if not self.external and self.target is None:
            raise ValueError("a project needs 'target' (or 'external: true' if managed elsewhere)")
        return self


class ScheduleSpec(_Frozen):
    """When a project's import runs, from which source, and whom to tell."""

    project: Name
    cron: Cron | None = Field(default=None, description="Standard 5-field cron or @daily etc.")
    interval: Interval | None = Field(
        default=None, description="A duration ('2h', '90m') or whole seconds; at least 3600."
    )
    timezone: TimeZone = "UTC"
    enabled: StrictBool = True
    callback_url: CallbackUrl | None = None
    sftp_override: SftpOverride | None = None
    local_files: tuple[NonEmpty, ...] | None = Field(default=None, min_length=1)
    misfire_grace: Seconds = 300
    timeout: Timeout | None = Field(
        default=None,
        description="How long a run may take ('30m', '2h' or whole seconds): a run still going "
        "then stops, rolls back the file it was loading and fails. Default: no limit.",
    )
    retries: Annotated[StrictInt, Field(ge=0, le=RETRIES_MAX)] = Field(
        default=0, description=f"How often a failed run is tried again, 0 to {RETRIES_MAX}."
    )
    retry_backoff: RetryBackoff = Field(
        default=RETRY_BACKOFF_DEFAULT,
        description="The wait before the first retry; each later retry waits twice as long as "
        f"the one before, at most {RETRY_DELAY_MAX // 3600}h.",
    )

    @model_validator(mode="after")
    def _one_timing_one_source(self) -> ScheduleSpec:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of 'cron' and 'interval'")
        if self.sftp_override is not None and self.local_files is not None:
            raise ValueError("give at most one of 'sftp_override' and 'local_files'")
        return self


class ProjectDocument(_Frozen):
    apiVersion: Literal["reconciler/v1"]
    kind: Literal["Project"]
    metadata: Metadata
    spec: ProjectSpec


class ScheduleDocument(_Frozen):
    apiVersion: Literal["reconciler/v1"]
    kind: Literal["Schedule"]
    metadata: Metadata
    spec: ScheduleSpec


Document = Annotated[ProjectDocument | ScheduleDocument, Field(discriminator="kind")]

_ADAPTER: TypeAdapter[ProjectDocument | ScheduleDocument] | None = None


def document_adapter() -> TypeAdapter[ProjectDocument | ScheduleDocument]:
    """The validator for one document, built once on first use."""
    global _ADAPTER  # noqa: PLW0603 -- a lazily built, immutable cache
    if _ADAPTER is None:
        _ADAPTER = TypeAdapter(Document)
    return _ADAPTER


SCHEMA_ID = "urn:reconciler:schema:reconciler-v1"  # names the version; not a place to fetch


def _whole(regex: str) -> str:
    # JSON Schema patterns search (ECMA-262): anchor both ends. Python's re, which jsonschema
    # uses, also lets $ match before a final newline; (?!\n) refuses it, as fullmatch does.
    return f"^(?:{regex})$(?!\\n)"


_PORT = r"6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}"
_URL_HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+"  # no '@': never credentials
_NAME_TEXT = {"pattern": _whole(_NAME.pattern)}
_REFERENCE = {"pattern": _whole(_SECRET_REF.pattern)}
_ONE_CHAR = {"minLength": 1, "maxLength": 1}
_IDENTIFIERS = {"items": {"type": "string", "pattern": _whole(_IDENTIFIER.pattern)}}
# What the validators above check that a JSON Schema can say too, for editors and CI linters:
# (definition, property, the JSON type of the branch it narrows) -> the keywords added there.
# Left to `reconcile validate`: cron expressions, zones the tz database lacks, reserved tables
# (a case-insensitive match: ECMA patterns have no flags), NUL characters and the YAML mistakes.
_NARROWED: dict[tuple[str, str, str], dict[str, Any]] = {
    ("Metadata", "name", "string"): _NAME_TEXT,
    ("ScheduleSpec", "project", "string"): _NAME_TEXT,
    ("Target", "database_url", "string"): _REFERENCE,
    ("Sftp", "password", "string"): _REFERENCE,
    ("SftpOverride", "password", "string"): _REFERENCE,
    ("Target", "table", "string"): {
        "pattern": _whole(f"{_IDENTIFIER.pattern}(?:\\.{_IDENTIFIER.pattern})?")
    },
    ("Target", "columns", "array"): _IDENTIFIERS,
    ("Target", "key", "array"): _IDENTIFIERS,
    ("CsvDialect", "delimiter", "string"): _ONE_CHAR,
    ("CsvDialect", "quote", "string"): _ONE_CHAR,
    ("CsvDialect", "escape", "string"): _ONE_CHAR,
    ("ScheduleSpec", "timezone", "string"): {
        "maxLength": _ZONE_MAX,
        "pattern": _whole(f"(?!(?:posix|right)/|(?:{'|'.join(_NOT_ZONES)})$){_ZONE_KEY.pattern}"),
    },
    ("ScheduleSpec", "callback_url", "string"): {
        "pattern": _whole(f"https?://(?:{_URL_HOST})(?::(?:{_PORT})?)?(?:[/?#][!-~]*)?")
    },
    ("ScheduleSpec", "interval", "integer"): {"minimum": MIN_INTERVAL_SECONDS},
    ("ScheduleSpec", "interval", "string"): {"pattern": _whole(DURATION_TEXT)},
    ("ScheduleSpec", "misfire_grace", "string"): {"pattern": _whole(DURATION_TEXT)},
    ("ScheduleSpec", "timeout", "integer"): {"minimum": 1},
    ("ScheduleSpec", "timeout", "string"): {"pattern": _whole(DURATION_TEXT)},
    ("ScheduleSpec", "retry_backoff", "integer"): {"minimum": 1, "maximum": RETRY_DELAY_MAX},
    ("ScheduleSpec", "retry_backoff", "string"): {"pattern": _whole(DURATION_TEXT)},
    ("Delivery", "settle", "string"): {"pattern": _whole(DURATION_TEXT)},
}


def _given(key: str, kind: str) -> dict[str, Any]:
    """A subschema: ``key`` is present and of JSON type ``kind`` (not null)."""
    return {"required": [key], "properties": {key: {"type": kind}}}


def _when(
    key: str, value: object, then: dict[str, Any], otherwise: dict[str, Any]
) -> dict[str, Any]:
    return {
        "if": {"required": [key], "properties": {key: {"const": value}}},
        "then": then,
        "else": otherwise,
    }


# The model validators' rules between fields, as JSON Schema.
_RULES: dict[str, dict[str, Any]] = {
    "ScheduleSpec": {
        "oneOf": [
            _given("cron", "string"),
            _given("interval", "integer"),
            _given("interval", "string"),
        ],
        "not": {"allOf": [_given("sftp_override", "object"), _given("local_files", "array")]},
    },
    "Target": _when(
        "mode", "upsert", _given("key", "array"), {"properties": {"key": {"type": "null"}}}
    ),
    "Sftp": _when("after_import", "move", _given("archive_dir", "string"), {}),
    "ProjectSpec": _when(
        "external",
        True,
        {"properties": {"target": {"type": "null"}, "sftp": {"type": "null"}}},
        _given("target", "object"),
    ),
}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a document, for editors (yaml-language-server) and CI linters: the
    models' schema, narrowed by what their validators check that JSON Schema can express."""
    schema = document_adapter().json_schema()
    definitions = schema["$defs"]
    for (definition, key, kind), keywords in _NARROWED.items():
        field = definitions[definition]["properties"][key]
        for branch in field.get("anyOf", [field]):
            if branch.get("type") == kind:
                branch.update(keywords)
    for definition, rules in _RULES.items():
        definitions[definition].update(rules)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "reconcile document (reconciler/v1)",
        **schema,
    }
