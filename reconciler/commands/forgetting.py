"""``reconcile forget PROJECT [--path GLOB]``: load files again on purpose.

A project's import ledger (``store.ledger``) records the bytes of every file it loaded, and never
loads the same bytes twice, whatever their name or mtime, and even after the project was removed
and declared again. This command is the one way to take those records back (as Snowflake's
``FORCE``): the forgotten files load again, in full, on the project's next run. It clears the
record in the management database and, for a project whose target is another database, the
record kept there beside the data (reached through the project's stored ``database_url``).
"""

from __future__ import annotations

import sys

from reconciler.commands.arguments import ForgetArguments
from reconciler.commands.output import emit_json
from reconciler.errors import EXIT_OK
from reconciler.model.plans import Kind, Row
from reconciler.model.specs import ProjectSpec
from reconciler.settings import Settings

__all__ = ["forget"]


def forget(arguments: ForgetArguments, settings: Settings) -> int:
    """Forget what project ``arguments.project`` imported (files whose path matches ``--path``)."""
    from reconciler.imports.secrets import resolve
    from reconciler.store.connecting import connect, open_store
    from reconciler.store.ledger import Ledger
    from reconciler.store.rows import fetch_rows

    project, pattern = arguments.project, arguments.path
    with open_store(settings) as conn:
        spec = _spec(fetch_rows(conn), project)
        forgotten = Ledger("", project, "").forget(conn, pattern)
        conn.commit()
    target = spec.target if spec is not None else None
    if target is not None and target.database_url:
        url = resolve(
            target.database_url,
            environ=settings.environ,
            where=f"project {project}: target.database_url",
        )
        assert url is not None
        schema = target.table.split(".")[0] if "." in target.table else None
        with connect(url) as tconn:
            external = Ledger("", project, "", schema, external=True)
            external.prepare(tconn)
            forgotten = max(forgotten, external.forget(tconn, pattern))
            tconn.commit()
    body = {"project": project, "path": pattern, "files": forgotten}
    if settings.output == "json":
        emit_json("Forgotten", body)
        return EXIT_OK
    which = f" matching {pattern}" if pattern else ""
    sys.stdout.write(
        f"{project}: forgot {forgotten} imported file(s){which}; their bytes load again "
        "on the next run\n"
    )
    return EXIT_OK


def _spec(rows: list[Row], project: str) -> ProjectSpec | None:
    for row in rows:
        if row.kind == Kind.PROJECT and row.name == project and row.fields.get("spec"):
            return ProjectSpec.model_validate(row.fields["spec"])
    return None
