"""`tunewatch predictions`: filters, pagination, follow, accuracy windows, exports, init-db,
prune, flush and cost, through the real command line entry point."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from predictions_support import fresh_database, grid, row

from evaluators.predictions.query import parse_time
from evaluators.predictions.spool import Spool
from evaluators.predictions.store import Filters, open_store
from tunewatch.cli import EXIT_BROKEN_PIPE, main


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith("TUNEWATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TUNEWATCH_EVALUATOR__STATE_DIR", str(tmp_path / "state"))
    return tmp_path


@pytest.fixture()
def url(env: Path) -> str:
    now = time.time() - 1000
    store = open_store("", state_dir=env / "state")
    store.write(grid(runs=("r1", "r2"), created_at=now))
    store.close()
    return f"sqlite:///{env / 'state' / 'predictions.sqlite3'}"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["predictions", *argv])
    return code, capsys.readouterr().out


def test_list_filters_and_pages(url: str, capsys):
    code, out = _run(capsys, "list", "--run", "r1", "--limit", "4")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["step", "example"] and len(lines) == 6
    assert lines[-1] == "page 1 of 4 (15 matching rows)"
    code, out = _run(capsys, "list", "--run", "r1", "--limit", "4", "--page", "4", "--json")
    assert [json.loads(x)["step"] for x in out.splitlines()] == [100, 100, 100]
    code, out = _run(capsys, "list", "--run", "r2", "--difficulty", "hard", "--match", "no",
                     "--step-min", "200", "--json")
    got = [json.loads(x) for x in out.splitlines()]
    assert {(r["step"], r["example_id"]) for r in got} == {(200, "ex-003"), (300, "ex-003")}
    code, out = _run(capsys, "list", "--dataset", "easy_50.jsonl", "--regime", "plain",
                     "--source", "synthetic", "--since", "1h", "--json")
    assert len(out.splitlines()) == 18
    code, out = _run(capsys, "list", "--until", "2000-01-01", "--json")
    assert out == ""


def test_follow_one_example_across_steps(url: str, capsys):
    code, out = _run(capsys, "follow", "ex-001", "--run", "r1")
    assert code == 0
    assert out.startswith("example ex-001 (easy_50.jsonl, easy)")
    steps = [line.split()[1] for line in out.splitlines()[5:]]
    assert steps == ["100", "200", "300"]
    assert "wrong 300" in out
    assert _run(capsys, "follow", "nope")[0] == 1


def test_follow_marks_where_the_answer_changed(url: str, env: Path, capsys):
    """grid(): even examples answer "hi" at every step, odd ones "wrong <step>"; a third run
    flips one example from wrong to right and back."""
    code, out = _run(capsys, "follow", "ex-001", "--run", "r1")
    assert code == 0 and out.splitlines()[4].split()[5] == "change"
    assert [line.split()[5] for line in out.splitlines()[5:]] == ["first", "changed",
                                                                   "changed"]
    code, out = _run(capsys, "follow", "ex-000", "--run", "r1", "--json")
    records = [json.loads(x) for x in out.splitlines()]
    assert [r["answer_changed"] for r in records] == [None, False, False]
    assert [r["step"] for r in records] == [100, 200, 300] and records[0]["prompt"]
    store = open_store("", state_dir=env / "state")
    store.write([row(run="r3", step=step, example_key="f", example_id="flip", answer=answer,
                     exact_match=ok, normalized_match=ok, failure_mode=None if ok else "x")
                 for step, answer, ok in ((100, "ho", False), (200, "hi", True),
                                          (300, "hu", False), (400, "hu", False))])
    store.close()
    code, out = _run(capsys, "follow", "flip", "--json")
    records = [json.loads(x) for x in out.splitlines()]
    assert [(r["answer_changed"], r["match_change"]) for r in records] == [
        (None, None), (True, "fixed"), (True, "broken"), (False, None)]
    code, out = _run(capsys, "follow", "flip")
    assert [" ".join(line.split()[5:7]) for line in out.splitlines()[5:]] == [
        "first ho", "changed fixed", "changed broken", "same hu"]


def test_accuracy_windows(url: str, capsys):
    code, out = _run(capsys, "accuracy", "--run", "r1")
    assert code == 0
    assert out.splitlines() == [
        "last  20: exact match 60.0% (9/15) (only 15 recorded)",
        "last  50: exact match 60.0% (9/15) (only 15 recorded)",
        "last 100: exact match 60.0% (9/15) (only 15 recorded)",
    ]


def test_exports(url: str, env: Path, capsys):
    assert _run(capsys, "export", "--format", "csv", "--output", str(env / "p.csv"),
                "--run", "r1", "--match", "yes")[0] == 0
    with (env / "p.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 and {r["exact_match"] for r in rows} == {"True"}
    assert rows[0]["step"] == "100" and rows[0]["created_at"].endswith("+00:00")
    code, out = _run(capsys, "export", "--run", "r2", "--step-max", "100")
    assert code == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == 5 and lines[0]["prompt"] == "Say 'hi'"


def test_a_reader_that_stops_reading_is_no_error(url: str, env: Path):
    """`tunewatch predictions export | head -1`: the reader goes away, which is no reason
    for a traceback. Its end of the pipe is closed before the command writes anything."""
    proc = subprocess.Popen([sys.executable, "-m", "tunewatch", "predictions", "export"],
                            cwd=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode(errors="replace")
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE, err
    assert "Traceback" not in err and "Error" not in err, err


def test_reading_a_store_that_does_not_exist_creates_none(env: Path, capsys):
    """`predictions list` in the wrong directory says there is no store there; it made an
    empty SQLite file and printed an empty page."""
    for action in ("list", "export", "accuracy"):
        assert main(["predictions", action]) == 2
    assert not (env / "state" / "predictions.sqlite3").exists()
    assert main(["predictions", "init-db"]) == 0
    assert _run(capsys, "list")[0] == 0


def test_usage_errors(url: str, capsys):
    assert main(["predictions", "list", "--since", "yesterday-ish"]) == 2
    assert main(["predictions", "list", "--limit", "0"]) == 2
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("2026-01-01T00:00:00") == parse_time("2026-01-01T00:00:00+00:00")


def test_prune_and_flush(env: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    store = open_store("", state_dir=env / "state")
    store.write(grid(steps=(100,), created_at=time.time() - 90 * 86400))
    Spool(env / "state" / "predictions_spool").append([row(step=700, example_key="s")] * 2)
    monkeypatch.setenv("TUNEWATCH_PREDICTIONS__EXPORT_DIR", str(env / "archive"))
    code, out = _run(capsys, "prune")
    assert (code, out) == (0, "deleted 5 row(s) older than 30 days\n")
    assert len(list((env / "archive").glob("*.jsonl"))) == 1
    code, out = _run(capsys, "flush")
    assert (code, out) == (0, "1 spooled row(s) written; 0 still pending\n")
    assert store.count(Filters()) == 1
    store.close()


def test_init_db_with_the_grafana_role(postgres, env: Path, capsys):
    import psycopg

    url = fresh_database(postgres)
    secret = env / "grafana_password"
    secret.write_text("test-only-password\n")
    code, out = _run(capsys, "--store", url, "init-db", "--grafana-role", "grafana_cli",
                     "--grafana-password-file", str(secret))
    assert code == 0
    assert "schema version 2 (applied 1, 2)" in out
    reader = url.replace(f"{postgres.user}@", "grafana_cli@")
    with psycopg.connect(reader) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 0


def test_cost_is_printed_from_the_measured_speed(env: Path, capsys):
    code, out = _run(capsys, "cost", "--examples-per-second", "4", "--examples", "100")
    assert code == 0
    assert out.splitlines() == [
        "20 row(s) per checkpoint at 4 examples/s: 5.00s of generation per checkpoint",
        "12 recorded checkpoint(s) per run: 60.0s per run",
    ]
    code, out = _run(capsys, "cost", "--examples-per-second", "8", "--examples", "100")
    assert "2.50s of generation per checkpoint" in out
    assert main(["predictions", "cost"]) == 2  # nothing measured yet
