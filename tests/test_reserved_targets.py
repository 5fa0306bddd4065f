"""``reserved_target``: the tables an import must never write, for the loader and the run alike."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.model.specs import TOOL_TABLES, reserved_target
from reconciler.store.ledger import EXTERNAL_LEDGER

REFUSED = [
    # (table, the start of the reason)
    ("cpi_imported_files", "cpi_imported_files is one of reconcile's own tables"),
    ("public.cpi_imported_files", "public.cpi_imported_files is one of reconcile's own tables"),
    ("sales.reconcile_imported_files", "sales.reconcile_imported_files is one of reconcile's own"),
    ("Cpi_Schedules", "Cpi_Schedules is one of reconcile's own tables"),
    ("cpi_projects", "cpi_projects is one of"),
    ("cpi_jobs", "cpi_jobs is one of"),
    ("_reconcile_stage", "_reconcile_stage is one of"),
    ("pg_catalog.pg_authid", "pg_catalog.pg_authid is in pg_catalog, PostgreSQL's own catalog"),
    ("PG_CATALOG.pg_class", "PG_CATALOG.pg_class is in PG_CATALOG"),
    ("information_schema.columns", "information_schema.columns is in information_schema"),
    ("pg_toast.pg_toast_1", "pg_toast.pg_toast_1 is in pg_toast"),
    ("pg_temp_3.t", "pg_temp_3.t is in pg_temp_3"),
    ("pg_authid", "pg_authid would name a system catalog (pg_catalog is searched first)"),
    ("pg_stat_activity", "pg_stat_activity would name a system catalog"),
]
ALLOWED = ["sales", "public.sales", "public.pg_things", "audit.cpi_jobs_archive", "pgx.t", "pg"]


@pytest.mark.parametrize(("table", "reason"), REFUSED, ids=[c[0] for c in REFUSED])
def test_reserved_tables_are_refused_with_a_reason(table: str, reason: str) -> None:
    """The tool's own tables anywhere, system schemas and unqualified pg_ names are refused."""
    said = reserved_target(table)
    assert said is not None
    assert said.startswith(reason), said


@pytest.mark.parametrize("table", ALLOWED)
def test_ordinary_tables_are_allowed(table: str) -> None:
    """Tables of the user's own, even named like ours or like a catalog, are allowed."""
    assert reserved_target(table) is None


def test_every_table_of_the_schema_is_reserved() -> None:
    """Each table reconcile's schema creates, and the ledger of other databases, is reserved."""
    schema = (Path(__file__).parent.parent / "reconciler" / "store" / "schema.sql").read_text()
    created = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema))
    assert created
    assert created | {EXTERNAL_LEDGER} <= TOOL_TABLES
