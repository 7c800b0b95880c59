"""Shared helpers of the predictions tests: databases on the test PostgreSQL, rows, restart.

Why a module and not fixtures in conftest.py: only tests/test_predictions_*.py use them, and
conftest.py belongs to every test.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import psycopg
from psycopg import sql
from services import LOCALHOST, Postgres

_counter = itertools.count()


def fresh_database(pg: Postgres, prefix: str = "preds") -> str:
    """A new empty database on the test server; its URL (superuser, trust auth)."""
    name = f"{prefix}_{int(time.time() * 1000) % 10**9}_{next(_counter)}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"postgresql://{pg.user}@{LOCALHOST}:{pg.port}/{name}"


def restart(pg: Postgres) -> None:
    """Start the session's server again on its data directory and port (no initdb)."""
    pg.spawn(pg._as_postgres(
        [pg._bin("postgres"), "-D", str(pg.data_dir), "-p", str(pg.port),
         "-k", str(pg.socket_dir), "-c", f"listen_addresses={LOCALHOST}", "-c", "fsync=off"]))
    pg.wait_ready(pg._accepting)


def row(**over: Any) -> dict[str, Any]:
    """A plausible prediction row; keyword arguments replace fields."""
    base: dict[str, Any] = {
        "run": "r1", "step": 100, "epoch": 0.5, "checkpoint": "checkpoint-100",
        "example_key": "k0", "example_id": "easy-000", "dataset": "easy_50.jsonl",
        "difficulty": "easy", "regime": "plain", "source": "synthetic", "pattern": "copy",
        "sampled": True, "prompt": "Say 'hi'", "golden": "hi", "answer": "hi",
        "exact_match": True, "normalized_match": True, "failure_mode": None,
        "contract_ok": None, "cross_entropy": 0.25, "prompt_tokens": 5, "golden_tokens": 1,
        "generated_tokens": 1, "generation_seconds": 0.01, "created_at": time.time(),
    }
    base.update(over)
    return base


def grid(runs: tuple[str, ...] = ("r1",), steps: tuple[int, ...] = (100, 200, 300),
         examples: int = 5, created_at: float | None = None) -> list[dict[str, Any]]:
    """Rows for every run x step x example; odd examples are wrong, hard from index 3."""
    now = time.time() if created_at is None else created_at
    out = []
    for run in runs:
        for step in steps:
            for i in range(examples):
                ok = i % 2 == 0
                out.append(row(run=run, step=step, checkpoint=f"checkpoint-{step}",
                               epoch=step / 200, example_key=f"k{i}", example_id=f"ex-{i:03d}",
                               difficulty="hard" if i >= 3 else "easy",
                               dataset="hard_200.jsonl" if i >= 3 else "easy_50.jsonl",
                               exact_match=ok, normalized_match=ok,
                               failure_mode=None if ok else "wrong_content",
                               answer="hi" if ok else f"wrong {step}",
                               created_at=now + step))
    return out
