"""``reconcile sql`` on real PostgreSQL: every statement's result, as ``psql -c`` shows them."""

from __future__ import annotations

import json

from conftest import Cli

SCRIPT = (
    "CREATE TABLE public.t (a int, b text); "
    "INSERT INTO public.t VALUES (1, 'x'), (2, NULL); "
    "SELECT a, b FROM public.t ORDER BY a; "
    "UPDATE public.t SET a = a + 10; "
    "SELECT count(*) AS n FROM public.t WHERE false; "
    "SELECT max(a) AS top FROM public.t"
)


def test_each_result_with_rows_is_shown(cli: Cli) -> None:
    """Three SELECTs among other statements: three tables, in order, a blank line between."""
    done = cli("sql", "-c", SCRIPT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "a\tb\n1\tx\n2\t\n\nn\n0\n\ntop\n12\n"


def test_json_lists_every_result(cli: Cli) -> None:
    """The JSON document has one entry per statement; columns and rows stay the last table's."""
    done = cli("sql", "-c", SCRIPT, "-o", "json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["kind"] == "QueryResult"
    assert [r["command"] for r in document["results"]] == [
        "CREATE TABLE",
        "INSERT 0 2",
        "SELECT 2",
        "UPDATE 2",
        "SELECT 1",
        "SELECT 1",
    ]
    assert document["results"][2]["rows"] == [{"a": 1, "b": "x"}, {"a": 2, "b": None}]
    assert document["results"][3] == {
        "command": "UPDATE 2",
        "columns": None,
        "rows": [],
        "rowcount": 2,
    }
    assert (document["columns"], document["rows"]) == (["top"], [{"top": 12}])


def test_statements_without_rows_print_nothing(cli: Cli) -> None:
    """DDL and DML alone: exit 0, nothing on stdout."""
    done = cli("sql", "-c", "CREATE TABLE public.u (a int); INSERT INTO public.u VALUES (1)")
    assert (done.returncode, done.stdout) == (0, "")


def test_a_failing_statement_rolls_back_the_others(cli: Cli) -> None:
    """One transaction: an error in the second statement leaves no table from the first."""
    failed = cli("sql", "-c", "CREATE TABLE public.v (a int); SELECT 1/0")
    assert failed.returncode == 1
    assert "division by zero" in failed.stderr
    done = cli("sql", "-c", "SELECT to_regclass('public.v') IS NULL AS gone")
    assert done.stdout == "gone\nTrue\n"
