"""Exactly once per file: the record of which files were loaded, written with the data itself.

``imports.runs.running`` asks ``Ledger.imported`` which listed files to skip, and inside each file's
transaction calls ``claim`` (before the COPY) and ``settle`` (after it). A file is identified by
project, source, path, size and mtime. The claim is an ``INSERT ... ON CONFLICT DO NOTHING`` on
that unique key: a second run racing for the same file waits for the first one's transaction and
then sees the row, so it never copies the file again, and a crash rolls the claim back with the
data. The record must therefore live in the database that receives the data:

- target = the management database: ``cpi_imported_files``, in the data's transaction.
- another target database: a small ``reconcile_imported_files`` table next to the target table,
  in the data's transaction, keyed by project name (the data and its record survive together even
  if the management database is rebuilt). PostgreSQL has no cross-database atomic commit without
  prepared transactions, which servers rarely enable, so this is the only exactly-once layout.
  After the commit a copy goes to ``cpi_imported_files`` for operators; it is informational only,
  so losing it to a crash at that instant costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from reconciler.errors import TargetError
from reconciler.store.locks import Fixed

if TYPE_CHECKING:
    import psycopg

    from reconciler.model.files import SourceFile

__all__ = ["CLAIM_WAIT", "EXTERNAL_LEDGER", "Ledger"]

EXTERNAL_LEDGER = "reconcile_imported_files"
CLAIM_WAIT = "30s"  # how long a claim waits for a concurrent run loading the same file
_CREATE_LOCK = Fixed.LEDGER_CREATE  # CREATE TABLE IF NOT EXISTS is not race-free

FileKey = tuple[str, int, Any]


def _key(f: SourceFile) -> FileKey:
    return (f.path, f.size, f.mtime)


@dataclass(frozen=True, slots=True)
class Ledger:
    """The exactly-once record for one project and one source, in the target's database."""

    project_id: str
    project: str
    source: str
    schema: str | None = None  # set for another target database: where its ledger table lives
    external: bool = False

    @property
    def _table(self) -> sql.Composable:
        if not self.external:
            return sql.Identifier("cpi_imported_files")
        if self.schema:
            return sql.Identifier(self.schema, EXTERNAL_LEDGER)
        return sql.Identifier(EXTERNAL_LEDGER)

    @property
    def _owner(self) -> tuple[sql.Composable, str]:
        if self.external:
            return sql.Identifier("project"), self.project
        return sql.Identifier("project_id"), self.project_id

    def prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Create the ledger table in another target database if it is not there yet."""
        if not self.external:
            return
        import psycopg as pg

        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (project TEXT NOT NULL, "
                        "source TEXT NOT NULL, path TEXT NOT NULL, size BIGINT NOT NULL, "
                        "mtime TIMESTAMPTZ NOT NULL, job_id UUID, rows_imported BIGINT NOT NULL "
                        "DEFAULT 0, imported_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
                        "PRIMARY KEY (project, source, path, size, mtime))"
                    ).format(self._table)
                )
        except pg.Error as exc:
            where = self._table.as_string(conn)
            raise TargetError(
                f"cannot create the import ledger {where} in the target database "
                f"({str(exc).strip()}); create it once as its owner or grant CREATE on the schema"
            ) from exc

    def imported(self, conn: psycopg.Connection[Any], files: Iterable[SourceFile]) -> set[FileKey]:
        """The keys of ``files`` that an earlier run already loaded."""
        listed = {_key(f) for f in files}
        if not listed:
            return set()
        column, owner = self._owner
        with conn.transaction():
            rows = conn.execute(
                sql.SQL(
                    "SELECT path, size, mtime FROM {} WHERE {} = %s AND source = %s "
                    "AND path = ANY(%s)"
                ).format(self._table, column),
                (owner, self.source, sorted({k[0] for k in listed})),
            ).fetchall()
        return {(r[0], r[1], r[2]) for r in rows} & listed

    def claim(self, conn: psycopg.Connection[Any], f: SourceFile, job_id: str) -> bool:
        """Inside the file's transaction: true if this run may load ``f``, false if loaded."""
        column, owner = self._owner
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(CLAIM_WAIT)))
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {} ({}, source, path, size, mtime, job_id) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1"
            ).format(self._table, column),
            (owner, self.source, f.path, f.size, f.mtime, job_id),
        ).fetchone()
        conn.execute("SET LOCAL lock_timeout = DEFAULT")
        return row is not None

    def settle(self, conn: psycopg.Connection[Any], f: SourceFile, rows: int) -> None:
        """Inside the file's transaction, after the COPY: record how many rows it loaded."""
        column, owner = self._owner
        conn.execute(
            sql.SQL(
                "UPDATE {} SET rows_imported = %s WHERE {} = %s AND source = %s AND path = %s "
                "AND size = %s AND mtime = %s"
            ).format(self._table, column),
            (rows, owner, self.source, f.path, f.size, f.mtime),
        )

    def mirror(
        self,
        conn: psycopg.Connection[Any],
        loaded: Iterable[tuple[SourceFile, int]],
        job_id: str,
    ) -> None:
        """After commit, copy another database's records into ``cpi_imported_files``."""
        if not self.external:
            return
        with conn.transaction():
            for f, rows in loaded:
                conn.execute(
                    "INSERT INTO cpi_imported_files (project_id, source, path, size, mtime, "
                    "job_id, rows_imported) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (self.project_id, self.source, f.path, f.size, f.mtime, job_id, rows),
                )
