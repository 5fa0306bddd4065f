"""Database passwords are masked in every form libpq accepts, wherever a URL is shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import Cli
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reconciler.logs import MASK, mask_url, redact

SECRET = "s3cr€t w0rd"  # a space and a non-ASCII character: quoting and encoding both matter

FORMS = {
    "keyword": "host=db.example.com port=5432 user=app password=hunter22 dbname=app",
    "keyword quoted": "host=db.example.com user=app password='hunter 22' dbname=app",
    "keyword escaped": r"host=db.example.com password='hun\'ter\\22' user=app",
    "keyword unquoted escape": r"host=db.example.com password=hun\ ter22 user=app",
    "keyword spaced": "host = db.example.com password = 'hunter 22' user = app",
    "postgresql URI": "postgresql://app:hunter22@db.example.com:5432/app?sslmode=require",
    "postgres URI": "postgres://app:hunter22@db.example.com/app",
    "URI percent-encoded": "postgresql://app:hun%40ter%2022@db.example.com/app",
    "URI query parameter": "postgresql://app@db.example.com/app?sslmode=disable&password=hunter22",
    "URI socket and query": "postgresql:///app?host=/run/postgresql&password=hunter22",
    "sslpassword": "host=db.example.com sslpassword=hunter22 sslkey=/k user=app",
}


@pytest.mark.parametrize("url", FORMS.values(), ids=FORMS.keys())
def test_mask_url_hides_the_password_and_keeps_the_rest(url: str) -> None:
    """The shown URL has no password left, and libpq reads every other setting unchanged."""
    shown = mask_url(url)
    assert "hunter" not in shown
    assert "ter22" not in shown
    original, masked = conninfo_to_dict(url), conninfo_to_dict(shown)
    secret_keys = {"password", "sslpassword"} & original.keys()
    assert {k: masked[k] for k in secret_keys} == dict.fromkeys(secret_keys, MASK)
    assert {k: v for k, v in masked.items() if k not in secret_keys} == {
        k: v for k, v in original.items() if k not in secret_keys
    }


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (FORMS["keyword"], "host=db.example.com port=5432 user=app password=*** dbname=app"),
        (FORMS["postgresql URI"], "postgresql://app:***@db.example.com:5432/app?sslmode=require"),
        (FORMS["URI query parameter"], "postgresql://app@db.example.com/app?sslmode=disable&password=***"),
        ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql://postgres:@/postgres?host=/tmp/pg"),
        ("host=db.example.com passfile=/run/pgpass", "host=db.example.com passfile=/run/pgpass"),
    ],
)  # fmt: skip
def test_mask_url_keeps_the_form_it_was_written_in(url: str, shown: str) -> None:
    """A URI stays a URI and keyword/value text keeps its order; no password, nothing masked."""
    assert mask_url(url) == shown


@pytest.mark.parametrize("url", FORMS.values(), ids=FORMS.keys())
def test_redact_masks_a_url_inside_free_text(url: str) -> None:
    """Log lines and messages holding a URL anywhere lose its password too."""
    shown = redact(f"could not reach {url}; retrying in 5 s")
    assert "hunter" not in shown
    assert "ter22" not in shown
    assert shown.endswith("retrying in 5 s")


@pytest.mark.parametrize(
    "text",
    ["PGPASSWORD=hunter22 psql", "sftp://importer:hunter22@sftp.example.com/out"],
)
def test_redact_masks_other_password_spellings(text: str) -> None:
    """An environment-style assignment and another scheme's user info are masked as well."""
    assert "hunter22" not in redact(text)


def _forms(server_url: str) -> dict[str, str]:
    """The test server, in each form, pointing at a database that does not exist."""
    params: dict[str, Any] = conninfo_to_dict(server_url)
    host = str(params.get("host", ""))
    port = params.get("port")
    where = f"host={quote(host, safe='')}" + (f"&port={port}" if port else "")
    return {
        "keyword": make_conninfo(**{**params, "dbname": "no_such_db", "password": SECRET}),
        "keyword escaped": make_conninfo(
            **{**params, "dbname": "no_such_db", "password": "it's \\ " + SECRET}
        ),
        "postgresql URI": f"postgresql://postgres:{quote(SECRET)}@/no_such_db?{where}",
        "postgres URI": f"postgres://postgres:{quote(SECRET)}@/no_such_db?{where}",
        "query parameter": f"postgresql:///no_such_db?{where}&user=postgres"
        f"&password={quote(SECRET)}",
    }


@pytest.mark.parametrize(
    "form", ["keyword", "keyword escaped", "postgresql URI", "postgres URI", "query parameter"]
)
def test_cannot_connect_shows_no_password(
    cli: Cli, pg_server: str, tmp_path: Path, form: str
) -> None:
    """A refused connection: one error line and debug logs with the URL masked, in every form."""
    url = _forms(pg_server)[form]
    done = cli("status", "--log-level", "debug", env={"RECONCILER_DATABASE_URL": url})
    assert done.returncode == 1
    output = done.stdout + done.stderr
    for piece in ("s3cr", "w0rd", quote(SECRET)):
        assert piece not in output
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith("error: cannot connect to PostgreSQL at ")
    assert MASK in errors[0]
    assert "no_such_db" in errors[0]
    assert '"url": ' in done.stderr  # the debug log line showing the URL, masked


def test_an_unparseable_url_is_not_echoed(cli: Cli) -> None:
    """Text libpq cannot parse: a usage error and a debug log with no piece of the password."""
    url = "host=db password=hunter qx7z user"
    done = cli("status", "--log-level", "debug", env={"RECONCILER_DATABASE_URL": url})
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(
        "error: the database URL is not a PostgreSQL connection string"
    )
    assert "hunter" not in done.stderr
    assert "qx7z" not in done.stderr  # not even the part after the space
