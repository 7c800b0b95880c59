"""The predictions store on SQLite and on the real test PostgreSQL: migrations, idempotent
writes, filters, pagination, retention with export, and Grafana's read-only role."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest
from predictions_support import fresh_database, grid, row

from evaluators.predictions.schema import FILTER_INDEXES, LATEST
from evaluators.predictions.store import Filters, Store, StoreError, open_store
from tunewatch.core.config import PredictionsConfig


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        s = open_store("", state_dir=tmp_path)
    else:
        pg = request.getfixturevalue("postgres")
        s = open_store(fresh_database(pg), state_dir=tmp_path)
    yield s
    s.close()


def _indexes(s: Store) -> set[str]:
    if s.dialect == "sqlite":
        with sqlite3.connect(s.target) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = ?", ("index",))
            return {r[0] for r in rows}
    with psycopg.connect(s.target) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s",
                            ("predictions",))
        return {r[0] for r in rows}


def test_migrations_apply_in_order_once(store: Store):
    assert store.version() == 0
    assert store.migrate(target=1) == [1]
    assert store.version() == 1
    assert not {name for name, _ in FILTER_INDEXES} & _indexes(store)
    assert store.migrate() == [2]
    assert store.migrate() == []
    assert store.version() == LATEST
    assert {name for name, _ in FILTER_INDEXES} <= _indexes(store)


def test_the_first_write_brings_an_old_store_forward(store: Store):
    store.migrate(target=1)
    reopened = Store(store.dialect, store.target)
    reopened.write([row()])
    assert reopened.version() == LATEST
    assert reopened.count(Filters()) == 1
    reopened.close()


def test_a_newer_schema_is_refused(tmp_path: Path):
    s = open_store("", state_dir=tmp_path)
    s.migrate()
    with sqlite3.connect(s.target) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (99, "future", 0.0))
    fresh = open_store("", state_dir=tmp_path)
    with pytest.raises(StoreError, match="newer than this tunewatch"):
        fresh.migrate()


def test_writes_are_idempotent(store: Store):
    rows = grid()
    assert store.write(rows) == len(rows)
    assert store.write(rows) == 0
    assert store.write([*rows[:3], row(step=400, checkpoint="checkpoint-400")]) == 1
    assert store.count(Filters()) == len(rows) + 1


def test_filters_and_pagination(store: Store):
    now = time.time()
    store.write(grid(runs=("r1", "r2"), created_at=now))
    assert store.count(Filters(run="r1")) == 15
    assert store.count(Filters(run="r1", step_min=200, step_max=300)) == 10
    assert store.count(Filters(run="r1", difficulty="hard")) == 6
    assert store.count(Filters(dataset="easy_50.jsonl", run="r2")) == 9
    assert store.count(Filters(run="r1", exact_match=False)) == 6
    assert store.count(Filters(regime="plain", source="synthetic")) == 30
    assert store.count(Filters(since=now + 150, until=now + 250)) == 10  # step 200 only
    first = store.query(Filters(run="r1"), limit=4, offset=0)
    second = store.query(Filters(run="r1"), limit=4, offset=4)
    assert [r["step"] for r in first] == [300, 300, 300, 300]
    assert {r["id"] for r in first}.isdisjoint({r["id"] for r in second})
    everything = list(store.iter_all(Filters(run="r1"), page=4))
    assert len(everything) == 15 and everything[0]["step"] == 100
    follow = store.query(Filters(run="r1", example_id="ex-001"), newest_first=False)
    assert [r["step"] for r in follow] == [100, 200, 300]
    assert [r["answer"] for r in follow] == ["wrong 100", "wrong 200", "wrong 300"]
    assert follow[0]["exact_match"] is False and follow[0]["contract_ok"] is None
    assert abs(follow[0]["created_at"] - (now + 100)) < 1e-3


def test_recent_matches_newest_first(store: Store):
    store.write(grid(examples=5))
    latest = store.recent_matches("r1", 7)
    assert latest == [True, False, True, False, True, True, False]
    store.write([row(step=500, example_key="extra", sampled=False, exact_match=False)])
    assert store.recent_matches("r1", 1) == [True]  # failed extras are not in the sample


def test_retention_exports_then_deletes(store: Store, tmp_path: Path):
    from evaluators.predictions.recorder import apply_retention

    now = time.time()
    old = grid(steps=(100,), created_at=now - 40 * 86400)
    store.write(old + grid(steps=(200,), created_at=now))
    cfg = PredictionsConfig(retention_days=30, export_dir=str(tmp_path / "archive"))
    assert apply_retention(store, cfg, now=now) == len(old)
    assert store.count(Filters()) == 5
    (archive,) = (tmp_path / "archive").glob("predictions-before-*.jsonl")
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [r["example_key"] for r in lines] == [r["example_key"] for r in old]
    assert lines[0]["created_at"].endswith("+00:00")
    assert apply_retention(store, cfg, now=now) == 0
    assert len(list((tmp_path / "archive").glob("*.jsonl"))) == 1


def test_grafana_role_reads_but_cannot_write(postgres, tmp_path: Path):
    url = fresh_database(postgres)
    s = open_store(url, state_dir=tmp_path)
    s.write(grid())
    s.grant_read_only("grafana_reader", "not-a-real-secret")
    s.grant_read_only("grafana_reader", None)  # idempotent
    reader = url.replace(f"{postgres.user}@", "grafana_reader@")
    with psycopg.connect(reader) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 15
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM predictions")
    with psycopg.connect(reader, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM predictions")
    s.close()


def test_values_are_bound_not_spliced(store: Store):
    nasty = "x'); DROP TABLE predictions; --"
    store.write([row(example_id=nasty, prompt=nasty, answer="%s ? $1")])
    (got,) = store.query(Filters(example_id=nasty))
    assert got["prompt"] == nasty and got["answer"] == "%s ? $1"
