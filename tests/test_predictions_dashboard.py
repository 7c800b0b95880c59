"""Every SQL query of the committed predictions dashboard returns rows from the real test
PostgreSQL, run as the read-only role Grafana uses, variables resolved by their own queries
and Grafana's macros expanded as Grafana expands them. A broken query fails the check."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from predictions_support import fresh_database, grid

from evaluators.predictions.store import open_store

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "grafana" / "dashboards" / "predictions.json"
VAR = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")
TIME_FILTER = re.compile(r"\$__timeFilter\(([^)]+)\)")
ROLE = "grafana_dash"


def sqlstring(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def expand(sql: str, values: dict[str, list[str]], start: float, end: float) -> str:
    """Grafana's expansion: $__timeFilter(col) to a BETWEEN of RFC 3339 instants, and
    ${var:sqlstring} to the quoted, comma-joined selected values (All: every value)."""
    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    sql = TIME_FILTER.sub(lambda m: f"{m.group(1)} BETWEEN '{iso(start)}' AND '{iso(end)}'",
                          sql)

    def var(m: re.Match[str]) -> str:
        name, fmt = m.group(1) or m.group(3), m.group(2)
        assert name in values, f"unknown variable {name} in {sql}"
        chosen = values[name]
        if fmt == "sqlstring":
            return ",".join(sqlstring(v) for v in chosen)
        assert fmt in (None, "raw"), fmt
        return ",".join(chosen)
    out = VAR.sub(var, sql)
    assert "$" not in out, out
    return out


@pytest.fixture(scope="module")
def reader(postgres, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = fresh_database(postgres, "dash")
    store = open_store(url, state_dir=tmp_path_factory.mktemp("dash"))
    store.write(grid(runs=("demo", "other"), created_at=time.time() - 3600))
    store.grant_read_only(ROLE, None)
    store.close()
    return url.replace(f"{postgres.user}@", f"{ROLE}@")


def _query(conn: psycopg.Connection, sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def resolve(conn: psycopg.Connection, dash: dict[str, Any], run: str, start: float,
            end: float, match: str = "any") -> dict[str, list[str]]:
    """Every variable's options as Grafana would compute them, in dependency order."""
    values: dict[str, list[str]] = {"run": [run]}
    for var in dash["templating"]["list"]:
        name = var["name"]
        if var["type"] == "datasource" or name == "run":
            continue
        if var["type"] == "custom":
            options = var["query"].split(",")
            assert match in options
            values[name] = [match]
        elif var["type"] == "textbox":
            values[name] = [var["query"]]
        else:
            rows = _query(conn, expand(var["query"], values, start, end))
            assert rows, f"variable {name} has no options for run {run}"
            # All for multi-value filters; the first option for single-value ones
            values[name] = [str(r[0]) for r in rows] if var.get("multi") else [str(rows[0][0])]
    return values


def targets(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["rawSql"]) for p in dash["panels"] if p["type"] != "row"
            for t in p["targets"]]


def test_every_dashboard_query_returns_rows(reader: str):
    dash = json.loads(DASHBOARD.read_text())
    end = time.time()
    start = end - 6 * 3600  # the dashboard's default range, now-6h
    assert dash["time"]["from"] == "now-6h"
    with psycopg.connect(reader) as conn:
        runs = [r[0] for r in _query(conn, dash["templating"]["list"][1]["query"])]
        assert runs == ["demo", "other"]
        for run in runs:
            for match in ("any", "no"):
                values = resolve(conn, dash, run, start, end, match)
                for title, sql in targets(dash):
                    rows = _query(conn, expand(sql, values, start, end))
                    assert rows and any(v is not None for v in rows[0]), (run, match, title)
        history = next(sql for title, sql in targets(dash) if title == "History")
        values = resolve(conn, dash, "demo", start, end, "no")
        rows = _query(conn, expand(history, values, start, end))
        assert {r[7] for r in rows} == {"no"}  # the match filter works
        values["step_from"] = values["step_to"] = ["200"]
        assert {r[1] for r in _query(conn, expand(history, values, start, end))} == {200}


def test_a_broken_query_fails_the_check(reader: str):
    dash = json.loads(DASHBOARD.read_text())
    sql = targets(dash)[0][1]
    end = time.time()
    with psycopg.connect(reader) as conn:
        values = resolve(conn, dash, "demo", end - 3600 * 6, end)
        with pytest.raises(psycopg.errors.UndefinedColumn):
            _query(conn, expand(sql.replace("exact_match", "exact_matches"), values,
                                end - 3600 * 6, end))
        conn.rollback()
        empty = expand(sql, {**values, "run": ["no-such-run"]}, end - 3600 * 6, end)
        assert _query(conn, empty) == [(None,)]
