"""The public names of every module, pinned: a change of the package's surface is a deliberate diff.

Each module declares ``__all__``; this test holds the same lists written out (as httpx's
``test_exported_members.py`` does), so adding, renaming or removing a public name, or a module,
fails here until the list below is changed with it. ``__all__`` is read from the source, so even
``python -m reconciler``'s ``__main__`` (which runs the CLI when imported) is covered.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import reconciler

_WITHOUT_ALL: frozenset[str] = frozenset()

PINNED: dict[str, list[str]] = {
    "reconciler": ["ReconcileError", "__version__"],
    "reconciler.__main__": [],
    "reconciler.cli": ["main"],
    "reconciler.commands": [],
    "reconciler.commands.arguments": [
        "CompletionArguments",
        "ExportArguments",
        "ForgetArguments",
        "HistoryArguments",
        "NextArguments",
        "NoArguments",
        "PlanArguments",
        "RunArguments",
        "SqlArguments",
        "StatusArguments",
    ],
    "reconciler.commands.completing": ["SHELLS", "Flag", "Vocabulary", "completion", "script"],
    "reconciler.commands.exporting": ["export_rows", "schedule_documents"],
    "reconciler.commands.offline": ["schema", "validate"],
    "reconciler.commands.output": [
        "OUTPUT_VERSION",
        "documents_printed",
        "emit_error",
        "emit_json",
        "paint",
    ],
    "reconciler.commands.querying": ["sql"],
    "reconciler.commands.reconciling": ["apply", "export", "plan", "status"],
    "reconciler.commands.reporting": [
        "FAILING",
        "STATES",
        "StatusEntry",
        "daemon_document",
        "fetch_status",
        "render_daemon",
        "render_status",
        "render_summary",
        "select",
        "tally",
    ],
    "reconciler.commands.running": ["history", "run"],
    "reconciler.commands.upcoming": ["MAX_COUNT", "next_runs"],
    "reconciler.daemon": [],
    "reconciler.daemon.answering": [
        "RETRY_AFTER",
        "BodyLimit",
        "Refused",
        "answer",
        "error",
        "install",
        "unavailable",
    ],
    "reconciler.daemon.api": [
        "API_KEY_HEADER",
        "BODY_LIMIT",
        "MAX_LIMIT",
        "Backend",
        "add_api",
        "attach",
        "detach",
    ],
    "reconciler.daemon.collecting": ["ScheduleCollector"],
    "reconciler.daemon.connections": [
        "HEADER_LIMIT",
        "KEEP_ALIVE_SECONDS",
        "REQUEST_SECONDS",
        "Throttle",
        "connection_cap",
        "protocol_class",
        "raise_descriptor_limit",
    ],
    "reconciler.daemon.http": ["HttpServer", "build_app"],
    "reconciler.daemon.leading": ["ELECT_SECONDS", "Leader"],
    "reconciler.daemon.metrics": ["RESULTS", "TRIGGERS", "Metrics", "Readiness"],
    "reconciler.daemon.responses": [
        "ErrorResponse",
        "JobListResponse",
        "JobResponse",
        "ManagedInGit",
        "RunAccepted",
        "RunSkipped",
        "ScheduleListResponse",
        "ScheduleResponse",
    ],
    "reconciler.daemon.serving": ["serve"],
    "reconciler.daemon.timing": ["Timer"],
    "reconciler.daemon.watching": ["Watcher"],
    "reconciler.daemon.working": ["Runner"],
    "reconciler.backoff": ["Backoff"],
    "reconciler.escaping": [
        "TEXT_LIMIT",
        "capped",
        "fence",
        "markdown",
        "markdown_code",
        "terminal",
        "workflow_message",
        "workflow_property",
    ],
    "reconciler.errors": [
        "EXIT_CHANGES",
        "EXIT_ERROR",
        "EXIT_GUARD",
        "EXIT_OK",
        "DataError",
        "EmbeddedServerError",
        "Finding",
        "GuardRefused",
        "HostKeyError",
        "InvalidDocuments",
        "NotFound",
        "OwnershipConflict",
        "PlanRefused",
        "ReconcileError",
        "SecretError",
        "SourceError",
        "StoreError",
        "TargetError",
        "Terminated",
        "UsageError",
    ],
    "reconciler.imports": [],
    "reconciler.imports.runs.callbacks": [
        "ATTEMPTS",
        "QUEUE",
        "RUN_BUDGET",
        "TIMEOUT",
        "Callback",
        "Courier",
        "deliver",
        "sign",
    ],
    "reconciler.imports.runs.posting": ["MAX_REPLY", "Refused", "post"],
    "reconciler.imports.engine.copying": [
        "BLOCK_SIZE",
        "CopyFailure",
        "Staged",
        "TargetTable",
        "copy_failure",
        "copy_statement",
        "inspect_target",
        "load",
        "match_header",
        "stage",
    ],
    "reconciler.imports.engine.digesting": ["Digesting", "digest_of"],
    "reconciler.commands.forgetting": ["forget"],
    "reconciler.imports.engine.framing": [
        "HEADER_LIMIT",
        "Framed",
        "locate_open_quote",
        "python_codec",
        "record_line",
    ],
    "reconciler.imports.engine.importing": [
        "Connections",
        "Imported",
        "Meter",
        "Progress",
        "import_files",
    ],
    "reconciler.imports.engine.quoting": ["Quotes", "Records"],
    "reconciler.model.durations": [
        "DURATION_TEXT",
        "INT4_MAX",
        "RETRIES_MAX",
        "RETRY_BACKOFF_DEFAULT",
        "RETRY_DELAY_MAX",
        "RetryBackoff",
        "Seconds",
        "Timeout",
        "parse_duration",
        "retry_delay",
    ],
    "reconciler.model.destinations": [
        "METADATA_HOSTS",
        "Destinations",
        "literal_refusal",
        "parse_destinations",
    ],
    "reconciler.model.delivery": [
        "empty_refusal",
        "growth_refusal",
        "marker_path",
        "ordered",
        "waiting",
        "without_markers",
    ],
    "reconciler.imports.sources.known_hosts": [
        "KnownHost",
        "KnownHostsPolicy",
        "host_matches",
        "keyscan",
        "load_policy",
        "parse_known_hosts",
    ],
    "reconciler.imports.sources.pipelining": ["REQUESTS", "REQUEST_SIZE", "PipelinedReader"],
    "reconciler.imports.runs.resolving": [
        "Deadline",
        "ImportSpec",
        "load_import",
        "open_source",
        "target_url",
    ],
    "reconciler.imports.runs.transferring": ["Outage", "transfer"],
    "reconciler.imports.runs.starting": ["start"],
    "reconciler.imports.runs.running": [
        "RECONNECT_WITHIN",
        "Claim",
        "Progress",
        "claim_run",
        "run_schedule",
    ],
    "reconciler.imports.secrets": ["reference_name", "resolve"],
    "reconciler.imports.sources.sftp": ["SftpSource"],
    "reconciler.imports.sources": ["implementation_for", "open_source"],
    "reconciler.imports.sources.local": ["LocalSource", "local_source"],
    "reconciler.imports.engine": [],
    "reconciler.imports.runs": [],
    "reconciler.logs": [
        "MASK",
        "configure",
        "get_logger",
        "mask_url",
        "one_line",
        "redact",
        "register_secret",
    ],
    "reconciler.model": [],
    "reconciler.model.explaining": ["Explanation", "dotted", "explain"],
    "reconciler.model.files": [
        "LocalFiles",
        "Opened",
        "Readable",
        "Source",
        "SourceFile",
        "merge_sftp",
    ],
    "reconciler.model.guards": ["Command", "Guard", "Refusal", "check", "evaluate", "invalid"],
    "reconciler.model.loading": ["MAX_FILE_BYTES", "Loaded", "LoadedDocument", "load_files"],
    "reconciler.model.occurrences": [
        "LOOKBACK",
        "MISSED_RECORDED",
        "Decision",
        "Due",
        "Missed",
        "Timing",
        "catch_up",
        "decide",
        "next_after",
    ],
    "reconciler.model.parsing": [
        "MAX_DEPTH",
        "MAX_NODES",
        "MAX_RESUMES",
        "Location",
        "ParsedDocument",
        "Problem",
        "locate",
        "parse_documents",
        "position_of",
    ],
    "reconciler.model.plans": [
        "Change",
        "Desired",
        "FieldDiff",
        "Kind",
        "Op",
        "Plan",
        "Row",
        "desired_rows",
        "flatten_fields",
        "make_plan",
        "resolve_local_files",
        "schedule_fields",
        "spec_hash",
    ],
    "reconciler.model.rendering": [
        "COMMENT_LIMIT",
        "MARKER",
        "plan_document",
        "plan_summary",
        "render_markdown",
        "render_plan",
    ],
    "reconciler.model.results": [
        "ALREADY_IMPORTED",
        "FileResult",
        "FileStatus",
        "JobResult",
        "JobStatus",
        "fold",
    ],
    "reconciler.model.scalars": [
        "MAX_DIGITS",
        "MAX_LISTED",
        "MAX_SHOWN",
        "NUMBER_START",
        "excerpt",
        "is_secret_key",
        "listed",
        "resolve",
    ],
    "reconciler.model.settling": ["SETTLE_SECONDS", "Read", "digest", "observe", "settle"],
    "reconciler.model.specs": [
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
    ],
    "reconciler.model.timing": [
        "describe",
        "fire_times_between",
        "next_fire_times",
        "normalize_cron",
    ],
    "reconciler.reading": [
        "SUFFIXES",
        "desired_from",
        "load_desired",
        "load_folder",
        "read_folder",
    ],
    "reconciler.settings": ["DEFAULT_OWNER", "MAX_IMPORT_WORKERS", "Settings", "load_settings"],
    "reconciler.store": [],
    "reconciler.store.applying": ["APPLY_LOCK", "apply_plan", "plan_against", "refuse_if_blocked"],
    "reconciler.store.connecting": [
        "connect",
        "database_url",
        "open_store",
        "process_name",
        "session_name",
        "set_role",
    ],
    "reconciler.store.daemon_state": [
        "DaemonState",
        "Fenced",
        "LeaderHeartbeat",
        "claim_leadership",
        "fence_leader",
        "holds_leadership",
        "leader_seen",
        "read_state",
        "record_load",
        "release_leadership",
        "take_leadership",
    ],
    "reconciler.store.history": ["job_history", "schedule_runs"],
    "reconciler.store.jobs": [
        "HEARTBEAT_SECONDS",
        "STALE_AFTER",
        "Ended",
        "Heartbeat",
        "ScheduleRef",
        "Started",
        "end_worker_jobs",
        "fail_lost_job",
        "finish_job",
        "job_lock_key",
        "occurrence_claimed",
        "reap_abandoned",
        "record_callback",
        "start_job",
    ],
    "reconciler.store.ledger": ["CLAIM_WAIT", "EXTERNAL_LEDGER", "Known", "Ledger", "file_key"],
    "reconciler.store.liveness": [
        "HEARTBEAT_SECONDS",
        "STALE_AFTER",
        "Heartbeat",
        "abandon",
        "job_lock_key",
        "reap_abandoned",
        "release_job_lock",
        "take_job_lock",
    ],
    "reconciler.store.listing": ["JobRow", "fetch_job", "list_jobs"],
    "reconciler.store.locks": ["RESERVED_RANGE", "Fixed", "Named", "lock_holder", "named_key"],
    "reconciler.store.migrating": [
        "MIGRATION_LOCK",
        "apply_schema",
        "is_current",
        "migrate",
        "schema_sql",
    ],
    "reconciler.store.pooling": ["ReadPool"],
    "reconciler.store.pruning": ["BATCH", "Pruned", "Retention", "prune_jobs"],
    "reconciler.store.rows": ["execute_plan", "fetch_rows", "refresh_sources"],
    "reconciler.store.schedules": [
        "ScheduleRecord",
        "fetch_schedule",
        "fetch_schedules",
        "fetch_unowned",
        "find_schedule",
        "list_schedules",
        "records",
        "schedule_ref",
    ],
    "reconciler.store.scheduling": ["CHANNEL", "notify_changed"],
    "reconciler.store.claiming": ["HANDOFF", "Claimed", "ClaimedRun", "claim_due"],
    "reconciler.store.claimed": ["hand_back", "schedule_retry", "start_claimed"],
    "reconciler.store.statistics": [
        "LANDED_ROWS",
        "ScheduleGauges",
        "count_run",
        "end_running",
        "schedule_gauges",
    ],
}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name, packages by their ``__init__``."""
    root = Path(reconciler.__file__).parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _declared(path: Path) -> list[str] | None:
    """The module's ``__all__`` as written in its source, or None if it declares none."""
    declared = None
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            assert isinstance(node, ast.Assign | ast.AnnAssign)
            assert node.value is not None
            declared = list(ast.literal_eval(node.value))
    return declared


def test_every_module_is_pinned() -> None:
    """A module added or removed is added to or removed from the pins in the same change."""
    assert set(_modules()) - _WITHOUT_ALL == set(PINNED)


@pytest.mark.parametrize("module", sorted(PINNED))
def test_public_names_are_pinned(module: str) -> None:
    """Each module's ``__all__`` is exactly its pinned list."""
    assert _declared(_modules()[module]) == PINNED[module]


@pytest.mark.parametrize("module", sorted(set(PINNED) - {"reconciler.__main__"}))
def test_public_names_exist(module: str) -> None:
    """Every name a module exports is defined in it (or imported into it)."""
    imported = importlib.import_module(module)
    assert [name for name in PINNED[module] if not hasattr(imported, name)] == []
