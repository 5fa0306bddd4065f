"""Exactly once per content: the record of which files a project has loaded, written with the data.

This module alone says what a file's identity is. An import is identified by its project (by
name) and a digest of its bytes, computed while they stream into COPY (``imports.engine``): the
same bytes are never loaded twice into a project, whatever the path, name, mtime, host alias or
login they arrive with. ``(path, size, mtime)`` is only the fast path that lets an unchanged file
be skipped unread: a file whose key changed is read, and if its digest is already recorded the
load is rolled back and the file recorded unchanged (a *sighting*, so that the next run skips it
unread too).

Each file's transaction calls ``record`` after its COPY: an ``INSERT ... ON CONFLICT DO NOTHING``
on the unique ``(project, digest)`` of loaded rows. A concurrent run loading the same bytes waits
for the first one's commit and then conflicts, so it never commits them again; a crash rolls the
record back with the data. The record must therefore live in the database that receives the data:

- target = the management database: ``cpi_imported_files``, in the data's transaction.
- another target database: ``reconcile_imported_files`` next to the target table, in the data's
  transaction, keyed by project name (the data and its record survive together even if the
  management database is rebuilt). PostgreSQL has no cross-database atomic commit without
  prepared transactions, which servers rarely enable, so this is the only exactly-once layout.
  After the commit a copy goes to ``cpi_imported_files`` for operators; it is informational only.

Records are keyed by project name and outlive the project's rows: removing a project and
declaring it again never makes its files new. ``forget`` (``reconcile forget``) is the one way to
load the same bytes again on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from psycopg import sql

from reconciler.errors import TargetError
from reconciler.store.locks import Fixed

if TYPE_CHECKING:
    import psycopg

    from reconciler.model.files import SourceFile

__all__ = ["CLAIM_WAIT", "EXTERNAL_LEDGER", "Known", "Ledger", "file_key"]

EXTERNAL_LEDGER = "reconcile_imported_files"
CLAIM_WAIT = "30s"  # how long a record waits for a concurrent run committing the same bytes
_CREATE_LOCK = Fixed.LEDGER_CREATE  # CREATE TABLE IF NOT EXISTS is not race-free
FileKey = tuple[str, int, datetime]

# The layout of the other database's ledger, and the steps that bring an older one to it (whose
# primary key was how a file was reached: project, source, path, size, mtime).
_EXTERNAL_TABLE = (
    "CREATE TABLE IF NOT EXISTS {t} (project TEXT NOT NULL, source TEXT NOT NULL, "
    "path TEXT NOT NULL, size BIGINT NOT NULL, mtime TIMESTAMPTZ NOT NULL, digest BYTEA, "
    "loaded BOOLEAN NOT NULL DEFAULT true, job_id UUID, rows_imported BIGINT NOT NULL DEFAULT 0, "
    "imported_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)
_EXTERNAL_MIGRATION = (
    "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS digest BYTEA",
    "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS loaded BOOLEAN NOT NULL DEFAULT true",
    "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {pkey}",
    "CREATE UNIQUE INDEX IF NOT EXISTS {content} ON {t} (project, digest) WHERE loaded",
    "CREATE UNIQUE INDEX IF NOT EXISTS {sighting} ON {t} (project, path) WHERE NOT loaded",
    "CREATE INDEX IF NOT EXISTS {by_path} ON {t} (project, path)",
)


def _stored(path: str) -> str:
    """``path`` as the ledger keeps it: a local name that is not UTF-8 (lone surrogates, which
    no database text can hold) with its bytes as ``\\xNN`` escapes, as SFTP names are shown."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def file_key(f: SourceFile) -> FileKey:
    """The fast-path key of a listed file: unchanged since a run that saw it, it is not read."""
    return (_stored(f.path), f.size, f.mtime)


@dataclass(frozen=True, slots=True)
class Known:
    """What the ledger knows of some listed paths: the fast-path keys it has seen, and for each
    path the ``(size, digest)`` of the loaded bytes it held (to tell a file that grew)."""

    seen: frozenset[FileKey] = frozenset()
    versions: dict[str, tuple[tuple[int, bytes], ...]] = field(default_factory=dict)

    def versions_of(self, f: SourceFile) -> tuple[tuple[int, bytes], ...]:
        """The ``(size, digest)`` of loaded bytes that ``f``'s path held."""
        return self.versions.get(_stored(f.path), ())


@dataclass(frozen=True, slots=True)
class Ledger:
    """The exactly-once record of one project, in the target's database."""

    project_id: str
    project: str
    source: str  # how the files were reached ("local", "sftp://user@host:port"): shown only
    schema: str | None = None  # set for another target database: where its ledger table lives
    external: bool = False

    @property
    def _table(self) -> sql.Composable:
        if not self.external:
            return sql.Identifier("cpi_imported_files")
        if self.schema:
            return sql.Identifier(self.schema, EXTERNAL_LEDGER)
        return sql.Identifier(EXTERNAL_LEDGER)

    def prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Create or bring up to date the ledger table in another target database."""
        if not self.external:
            return
        import psycopg as pg

        name = self._table.as_string(conn)
        try:
            with conn.transaction():
                current = conn.execute(
                    "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                    "AND attname = 'loaded' AND NOT attisdropped",
                    (name,),
                ).fetchone()
                if current:
                    return
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
                names = {
                    "t": self._table,
                    "pkey": sql.Identifier(f"{EXTERNAL_LEDGER}_pkey"),
                    "content": sql.Identifier(f"{EXTERNAL_LEDGER}_content"),
                    "sighting": sql.Identifier(f"{EXTERNAL_LEDGER}_sighting"),
                    "by_path": sql.Identifier(f"{EXTERNAL_LEDGER}_path"),
                }
                for statement in (_EXTERNAL_TABLE, *_EXTERNAL_MIGRATION):
                    conn.execute(sql.SQL(statement).format(**names))
        except pg.Error as exc:
            raise TargetError(
                f"cannot create or update the import ledger {name} in the target database "
                f"({str(exc).strip()}); create it once as its owner or grant CREATE on the schema"
            ) from exc

    def lookup(self, conn: psycopg.Connection[Any], files: Iterable[SourceFile]) -> Known:
        """What the ledger knows of the paths of ``files``."""
        paths = sorted({_stored(f.path) for f in files})
        if not paths:
            return Known()
        with conn.transaction():
            rows = conn.execute(
                sql.SQL(
                    "SELECT path, size, mtime, digest, loaded FROM {} "
                    "WHERE project = %s AND path = ANY(%s)"
                ).format(self._table),
                (self.project, paths),
            ).fetchall()
        versions: dict[str, list[tuple[int, bytes]]] = {}
        for path, size, _, digest, _ in rows:  # loaded here, or seen here holding loaded bytes
            if digest is not None:
                versions.setdefault(path, []).append((size, bytes(digest)))
        return Known(
            frozenset((r[0], r[1], r[2]) for r in rows),
            {path: tuple(v) for path, v in versions.items()},
        )

    def _columns(self) -> tuple[sql.Composable, list[str]]:
        names = ["project", "source", "path", "size", "mtime", "digest", "loaded", "job_id"]
        if not self.external:
            names.append("project_id")
        return sql.SQL(", ").join(sql.Identifier(n) for n in names), names

    def _values(self, f: SourceFile, digest: bytes, job_id: str, *, loaded: bool) -> list[Any]:
        path = _stored(f.path)
        values: list[Any] = [self.project, self.source, path, f.size, f.mtime, digest, loaded]
        values.append(job_id)
        if not self.external:
            values.append(self.project_id)
        return values

    def record(
        self, conn: psycopg.Connection[Any], f: SourceFile, digest: bytes, rows: int, job_id: str
    ) -> bool:
        """Inside the file's transaction, after its COPY: true if these bytes are new to the
        project (now recorded), false if they were loaded before (the caller rolls back). A
        concurrent run committing the same bytes is waited for, at most ``CLAIM_WAIT``."""
        import psycopg as pg

        columns, names = self._columns()
        # The three statements go in one round trip where libpq can pipeline them.
        with conn.pipeline() if pg.Pipeline.is_supported() else nullcontext():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(CLAIM_WAIT)))
            inserted = conn.execute(
                sql.SQL(
                    "INSERT INTO {} ({}, rows_imported) VALUES ({}, %s) "
                    "ON CONFLICT (project, digest) WHERE loaded DO NOTHING RETURNING 1"
                ).format(self._table, columns, sql.SQL(", ").join(sql.Placeholder() * len(names))),
                [*self._values(f, digest, job_id, loaded=True), rows],
            )
            conn.execute("SET LOCAL lock_timeout = DEFAULT")
        return inserted.fetchone() is not None

    def sight(
        self, conn: psycopg.Connection[Any], f: SourceFile, digest: bytes, job_id: str
    ) -> None:
        """Remember that ``f``, as listed, holds bytes already loaded: the next run skips it
        unread. One sighting per path (the latest), so the ledger grows with paths, not runs."""
        columns, names = self._columns()
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (project, path) WHERE NOT loaded "
                    "DO UPDATE SET size = EXCLUDED.size, mtime = EXCLUDED.mtime, "
                    "digest = EXCLUDED.digest, source = EXCLUDED.source, job_id = EXCLUDED.job_id, "
                    "imported_at = now()"
                ).format(self._table, columns, sql.SQL(", ").join(sql.Placeholder() * len(names))),
                self._values(f, digest, job_id, loaded=False),
            )

    def forget(self, conn: psycopg.Connection[Any], pattern: str | None = None) -> int:
        """Forget the files loaded into the project (those whose path matches the glob
        ``pattern``, if given): their bytes load again on the next run. Returns how many."""
        with conn.transaction():
            rows = conn.execute(
                sql.SQL("SELECT path, digest FROM {} WHERE project = %s AND loaded").format(
                    self._table
                ),
                (self.project,),
            ).fetchall()
            chosen = [r for r in rows if pattern is None or fnmatchcase(r[0], pattern)]
            paths = sorted({r[0] for r in chosen})
            digests = [r[1] for r in chosen if r[1] is not None]
            conn.execute(
                sql.SQL(
                    "DELETE FROM {} WHERE project = %s AND (path = ANY(%s) OR digest = ANY(%s))"
                ).format(self._table),
                (self.project, paths, digests),
            )
        return len(chosen)

    def mirror(
        self,
        conn: psycopg.Connection[Any],
        loaded: Sequence[tuple[SourceFile, bytes, int]],
        job_id: str,
    ) -> None:
        """After commit, copy another database's records into ``cpi_imported_files``."""
        if not self.external:
            return
        local = Ledger(self.project_id, self.project, self.source)
        columns, names = local._columns()
        with conn.transaction():
            for f, digest, rows in loaded:
                conn.execute(
                    sql.SQL(
                        "INSERT INTO cpi_imported_files ({}, rows_imported) VALUES ({}, %s) "
                        "ON CONFLICT DO NOTHING"
                    ).format(columns, sql.SQL(", ").join(sql.Placeholder() * len(names))),
                    [*local._values(f, digest, job_id, loaded=True), rows],
                )
