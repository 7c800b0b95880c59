"""The Predictions dashboard's new views compute what the CLI computes, on the real test
PostgreSQL as Grafana's read-only role: the prompt-length and pattern filters the
Evaluation dashboard's heatmap cells link with, and the changed-answer marker (per example
and per checkpoint) against `tunewatch predictions follow`'s own rule (query.changes).

Why next to test_predictions_dashboard.py: that test proves every query returns rows; this
one proves the rows are the right ones, where the SQL has logic of its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from predictions_support import fresh_database, row
from test_predictions_dashboard import expand, resolve

from evaluators.predictions.query import changes, follow
from evaluators.predictions.store import open_store

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "grafana" / "dashboards" / "predictions.json"
EVALUATION = REPO / "grafana" / "dashboards" / "evaluation.json"
ROLE = "grafana_views"
RUN = "views"
STEPS = (100, 200, 300, 400)
# Prompt lengths on both sides of every default bucket edge (0-50, 50-100, 100-200, 200+).
TOKENS = (0, 49, 50, 99, 100, 199, 200, 4000)
PATTERNS = ("syllogism", "counting")


def answer(i: int, step: int) -> tuple[str, bool]:
    """Example i at a step: some never change, some change and stay wrong, some flip."""
    kind = i % 4
    if kind == 0:
        return "right", True
    if kind == 1:
        return f"wrong {step}", False
    if kind == 2:
        ok = (step // 100) % 2 == 0
        return ("right" if ok else f"off {step}"), ok
    return ("right", True) if step >= 300 else (f"early {step}", False)


def rows() -> list[dict[str, Any]]:
    now = time.time() - 3600
    out = []
    for step in STEPS:
        for i, tokens in enumerate(TOKENS):
            text, ok = answer(i, step)
            out.append(row(run=RUN, step=step, checkpoint=f"checkpoint-{step}",
                           example_key=f"k{i}", example_id=f"ex-{i}", answer=text,
                           exact_match=ok, normalized_match=ok, prompt_tokens=tokens,
                           pattern=PATTERNS[i % 2], failure_mode=None if ok else "wrong",
                           created_at=now + step))
    return out


@pytest.fixture(scope="module")
def db(postgres, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    url = fresh_database(postgres, "views")
    store = open_store(url, state_dir=tmp_path_factory.mktemp("views"))
    store.write(rows())
    store.grant_read_only(ROLE, None)
    expected = {f"ex-{i}": changes(follow(store, f"ex-{i}", RUN)) for i in range(len(TOKENS))}
    store.close()
    return {"reader": url.replace(f"{postgres.user}@", f"{ROLE}@"), "changes": expected}


def target(title: str) -> str:
    dash = json.loads(DASHBOARD.read_text())
    panel = next(p for p in dash["panels"] if p["title"] == title and p["type"] != "row")
    return panel["targets"][0]["rawSql"]


def run_query(db: dict[str, Any], title: str, **chosen: list[str]) -> list[tuple[Any, ...]]:
    dash = json.loads(DASHBOARD.read_text())
    end = time.time()
    start = end - 6 * 3600
    with psycopg.connect(db["reader"]) as conn:
        values = {**resolve(conn, dash, RUN, start, end), **chosen}
        sql = expand(target(title), values, start, end)
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


@pytest.mark.parametrize(("bucket", "low", "high"), [
    ("0-50", 0, 50), ("50-100", 50, 100), ("100-200", 100, 200), ("200+", 200, None),
    ("any", 0, None)])
def test_the_length_bucket_filter_keeps_that_bucket(db, bucket: str, low: int,
                                                    high: int | None):
    found = run_query(db, "History", length_bucket=[bucket])
    tokens = {r[-1] for r in found}  # prompt_tokens, the last column
    expected = {t for t in TOKENS if t >= low and (high is None or t < high)}
    assert tokens == expected
    assert len(found) == len(expected) * len(STEPS)


def test_the_pattern_filter(db):
    found = run_query(db, "History", pattern=["counting"])
    assert {r[-2] for r in found} == {"counting"}
    assert len(found) == len(STEPS) * sum(p == "counting" for p in
                                          (PATTERNS[i % 2] for i in range(len(TOKENS))))


def test_the_example_table_marks_changes_as_follow_does(db):
    for i in range(len(TOKENS)):
        found = run_query(db, "Example ${example}", example=[f"ex-{i}"])
        marks = [r[5] for r in found]  # step, epoch, checkpoint, answer, match, change
        assert marks == [c.marker() for c in db["changes"][f"ex-{i}"]], i


def test_changed_answers_per_checkpoint_count_what_follow_marks(db):
    found = run_query(db, "Changed answers per checkpoint")
    counted = [tuple(r[1:]) for r in found]  # changed, fixed, broken per step, in time order
    expected = []
    for n in range(len(STEPS)):
        per_example = [c[n] for c in db["changes"].values()]
        expected.append((sum(bool(c.answer_changed) for c in per_example),
                         sum(c.match_change == "fixed" for c in per_example),
                         sum(c.match_change == "broken" for c in per_example)))
    assert counted == expected
    assert any(e[1] for e in expected) and any(e[2] for e in expected)  # both flips occur


def test_changed_at_the_latest_checkpoint(db):
    found = run_query(db, "Answers changed at the latest checkpoint")
    latest = {k for k, c in db["changes"].items() if c[-1].answer_changed}
    assert {r[0] for r in found} == latest and latest


def test_a_heatmap_cell_links_to_these_filters():
    """The Evaluation dashboard's pattern x length cells set the variables filtered here."""
    evaluation = json.loads(EVALUATION.read_text())
    matrix = next(p for p in evaluation["panels"]
                  if p["title"] == "Exact match by pattern x prompt length")
    urls = [link["url"] for o in matrix["fieldConfig"]["overrides"] for prop in o["properties"]
            if prop["id"] == "links" for link in prop["value"]]
    assert urls and all(u.startswith("/d/tunewatch-predictions?") for u in urls)
    names = {v["name"] for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    for url in urls:
        params = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&")
                      if "=" in part)
        assert {"var-pattern", "var-length_bucket", "var-run"} <= set(params)
        assert {k[4:] for k in params if k.startswith("var-")} <= names
