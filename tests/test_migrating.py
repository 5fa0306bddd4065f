"""The management schema: the seed's DDL kept exactly, idempotent and safe under concurrency."""

from __future__ import annotations

import threading

import psycopg
import pytest

from reconciler.store.migrating import migrate

SEED_COLUMNS = [
    ("id", "uuid"),
    ("name", "character varying"),
    ("project_id", "uuid"),
    ("schedule_type", "character varying"),
    ("cron_expression", "character varying"),
    ("interval_seconds", "integer"),
    ("timezone", "character varying"),
    ("enabled", "boolean"),
    ("callback_url", "text"),
    ("sftp_override", "jsonb"),
    ("local_files", "jsonb"),
    ("last_run_at", "timestamp with time zone"),
    ("next_run_at", "timestamp with time zone"),
    ("last_job_id", "uuid"),
    ("total_runs", "integer"),
    ("successful_runs", "integer"),
    ("failed_runs", "integer"),
    ("created_at", "timestamp with time zone"),
    ("updated_at", "timestamp with time zone"),
]


def _columns(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_seed_columns_come_first_and_unchanged(empty_database_url: str) -> None:
    """cpi_schedules starts with every seed column, in order, with the seed's types."""
    with psycopg.connect(empty_database_url) as conn:
        migrate(conn)
        conn.commit()
        assert _columns(conn, "cpi_schedules")[: len(SEED_COLUMNS)] == SEED_COLUMNS


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        (
            "INSERT INTO cpi_schedules (name, schedule_type, interval_seconds) "
            "VALUES ('x', 'interval', 60)",
            "cpi_schedules_interval_seconds_check",
        ),
        (
            "INSERT INTO cpi_schedules (name, schedule_type) VALUES ('x', 'weekly')",
            "cpi_schedules_schedule_type_check",
        ),
    ],
)
def test_seed_constraints_hold(empty_database_url: str, statement: str, constraint: str) -> None:
    """The seed's CHECK constraints are in force."""
    with psycopg.connect(empty_database_url) as conn:
        migrate(conn)
        conn.commit()
        with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
            conn.execute(statement)


def test_migrate_is_idempotent(empty_database_url: str) -> None:
    """Running the migrations again changes nothing and raises nothing."""
    with psycopg.connect(empty_database_url) as conn:
        migrate(conn)
        conn.commit()
        before = _columns(conn, "cpi_jobs")
        conn.execute("COMMENT ON TABLE cpi_imported_files IS NULL")  # force the full path again
        conn.commit()
        migrate(conn)
        conn.commit()
        assert _columns(conn, "cpi_jobs") == before


def test_migrate_adopts_the_old_apis_tables(empty_database_url: str) -> None:
    """Tables created by the original API gain reconcile's columns and keep their rows."""
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(
            "CREATE TABLE cpi_projects (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), "
            "name VARCHAR(255) UNIQUE NOT NULL, description TEXT)"
        )
        conn.execute("INSERT INTO cpi_projects (name, description) VALUES ('legacy', 'kept')")
        conn.commit()
        migrate(conn)
        conn.commit()
        row = conn.execute("SELECT name, description, owner FROM cpi_projects").fetchone()
        assert row == ("legacy", "kept", None)


def test_concurrent_migrations_do_not_fail(empty_database_url: str) -> None:
    """Eight connections migrating one empty database at once all succeed."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        try:
            with psycopg.connect(empty_database_url) as conn:
                barrier.wait()
                migrate(conn)
                conn.commit()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_migrating_does_not_wait_for_an_apply_or_an_import(empty_database_url: str) -> None:
    """Sessions holding the apply, ledger-creation and job locks do not hold up a migration."""
    from reconciler.store.jobs import job_lock_key
    from reconciler.store.locks import Fixed

    with psycopg.connect(empty_database_url) as holder, psycopg.connect(empty_database_url) as conn:
        for key in (Fixed.APPLY, Fixed.LEDGER_CREATE, job_lock_key("daily-sales-import")):
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        conn.execute("SET lock_timeout = '2s'")
        conn.commit()
        migrate(conn)
        assert _columns(conn, "cpi_jobs")
