"""The documents users write in ``schedules.d/``: frozen pydantic models with unknown keys rejected.

``model.loading`` turns YAML into these; ``model.plans`` turns them into desired rows; ``reconcile
schema`` prints their JSON Schema. Everything here is pure: no I/O, no clock, no environment.
Secrets are ``${VAR}`` references, kept verbatim; only the import engine resolves them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    model_validator,
)

from reconciler.model import timing

__all__ = [
    "API_VERSION",
    "MIN_INTERVAL_SECONDS",
    "CsvDialect",
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
]

API_VERSION = "reconciler/v1"
MIN_INTERVAL_SECONDS = 3600  # the seed's CHECK (interval_seconds >= 3600)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_SECRET_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_DURATION_PART = re.compile(r"(\d+)([dhms])")
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, at most 255 characters"
        )
    return value


def _secret_ref(value: str) -> str:
    if not _SECRET_REF.match(value):
        raise ValueError(
            "secrets must be references like ${SFTP_PASSWORD}, never literal values; "
            "put the value in an environment variable and reference it here"
        )
    return value


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a plain SQL identifier (letters, digits, '_', at most 63 characters)"
        )
    return value


def _table(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2:
        raise ValueError(f"{value!r}: write a table as 'name' or 'schema.name'")
    for part in parts:
        _identifier(part)
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None
    return value


def _single_char(value: str) -> str:
    if len(value) != 1:
        raise ValueError(f"{value!r} must be exactly one character")
    return value


def parse_duration(value: object) -> int:
    """Whole seconds from ``3600``, ``"90s"``, ``"2h"``, ``"1h30m"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '2h' or '300s'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            seconds = int(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"{value!r} is not a duration: write whole seconds or units d, h, m, s "
                    "such as '2h', '90m' or '1h30m'"
                )
            seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError("a duration is a number of seconds or a string like '2h' or '300s'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _cron(value: str) -> str:
    return timing.normalize_cron(value)


Name = Annotated[StrictStr, AfterValidator(_name)]
SecretRef = Annotated[StrictStr, AfterValidator(_secret_ref)]
Identifier = Annotated[StrictStr, AfterValidator(_identifier)]
TableName = Annotated[StrictStr, AfterValidator(_table)]
TimeZone = Annotated[StrictStr, AfterValidator(_timezone)]
Char = Annotated[StrictStr, AfterValidator(_single_char)]
# The JSON Schema shows what users may write ("2h" or 7200), not the whole seconds it becomes.
_DURATION_INPUT = (
    Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=r"^\s*(\d+|(\d+[dhmsDHMS])+)\s*$")]
)
Seconds = Annotated[int, BeforeValidator(parse_duration, json_schema_input_type=_DURATION_INPUT)]
Cron = Annotated[StrictStr, AfterValidator(_cron)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]


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


class ProjectSpec(_Frozen):
    """A project: the target table, the CSV dialect and the default SFTP source.

    ``external: true`` declares a project that exists in the database but is managed elsewhere
    (the old API, another folder), so schedules here may reference it.
    """

    external: StrictBool = False
    target: Target | None = None
    csv: CsvDialect = CsvDialect()
    sftp: Sftp | None = None

    @model_validator(mode="after")
    def _target_unless_external(self) -> ProjectSpec:
        if self.external and (self.target or self.sftp or self.csv != CsvDialect()):
            raise ValueError("an external project is managed elsewhere: give it no other fields")
        if not self.external and self.target is None:
            raise ValueError("a project needs 'target' (or 'external: true' if managed elsewhere)")
        return self


class ScheduleSpec(_Frozen):
    """When a project's import runs, from which source, and whom to tell."""

    project: Name
    cron: Cron | None = Field(default=None, description="Standard 5-field cron or @daily etc.")
    interval: Seconds | None = Field(
        default=None, description="A duration ('2h', '90m') or whole seconds; at least 3600."
    )
    timezone: TimeZone = "UTC"
    enabled: StrictBool = True
    callback_url: StrictStr | None = Field(default=None, pattern=r"^https?://\S+$")
    sftp_override: SftpOverride | None = None
    local_files: tuple[NonEmpty, ...] | None = Field(default=None, min_length=1)
    misfire_grace: Seconds = 300

    @model_validator(mode="after")
    def _one_timing_one_source(self) -> ScheduleSpec:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of 'cron' and 'interval'")
        if self.interval is not None and self.interval < MIN_INTERVAL_SECONDS:
            raise ValueError(
                f"interval {self.interval} s is shorter than the minimum of "
                f"{MIN_INTERVAL_SECONDS} s (1h); use a cron expression for finer timing"
            )
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


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a document, for editors (yaml-language-server)."""
    schema = document_adapter().json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "reconcile document (reconciler/v1)"
    return schema
