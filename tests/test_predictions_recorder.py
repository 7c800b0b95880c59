"""Recording predictions from real evaluations of the tiny model: the fixed sample, the
daemon's hook, PostgreSQL stopped mid-run (every row exactly once), the cost estimate and
the overhead on the evaluation thread."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from predictions_support import fresh_database, restart

from evaluators import evaluate_checkpoint, load_suite
from evaluators.daemon import Daemon
from evaluators.evaluate import EvalResult
from evaluators.predictions import cost
from evaluators.predictions.recorder import Recorder
from evaluators.predictions.sample import build_rows, due, render_prompt, sample_keys
from evaluators.predictions.spool import Spool
from evaluators.predictions.store import Filters, Store, open_store
from tunewatch.core.config import EvaluatorConfig, PredictionsConfig

LIMIT = 30
SAMPLE = 8


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    """(suite, [(checkpoint path, result, seconds)]) for the tiny run's checkpoints."""
    cfg = EvaluatorConfig(device="cpu", batch_size=64)
    suite = load_suite(tiny_run.data_dir, [])
    out = []
    for path in tiny_run.checkpoints:
        started = time.perf_counter()
        result = evaluate_checkpoint(path, cfg, suite=suite, limit=LIMIT, show_progress=False)
        out.append((path, result, time.perf_counter() - started))
    return suite, out


def _cfg(**over) -> PredictionsConfig:
    return dataclasses.replace(PredictionsConfig(sample_size=SAMPLE), **over)


def _recorder(store: Store, tmp_path: Path, **kwargs) -> Recorder:
    return Recorder(_cfg(**kwargs.pop("cfg", {})), store=store, spool=Spool(tmp_path / "spool"),
                    run="r1", **kwargs)


def test_the_sample_is_fixed_by_the_seed(evaluated):
    suite, runs = evaluated
    keys = [e.key for e in suite.examples]
    assert sample_keys(keys, SAMPLE, 0) == sample_keys(list(reversed(keys)), SAMPLE, 0)
    assert sample_keys(keys, SAMPLE, 0) != sample_keys(keys, SAMPLE, 1)
    assert len(sample_keys(keys, 10**6, 0)) == len(set(keys))
    evaluated_keys = [o.key for o in runs[0][1].outcomes]
    sample = sample_keys(evaluated_keys, SAMPLE, 0)
    per_step = []
    for path, result, _ in runs:
        rows = build_rows(_cfg(), run="r1", step=result.step or 0, epoch=None,
                          checkpoint=path.name, outcomes=result.outcomes,
                          examples=suite.examples, sample=sample, duration=1.0, created_at=0.0)
        per_step.append({r["example_key"] for r in rows})
        first = rows[0]
        example = next(e for e in suite.examples if e.key == first["example_key"])
        assert first["prompt"] == render_prompt(example.prompt) and first["prompt"]
        assert first["golden"] == example.golden
        assert sum(r["generation_seconds"] for r in rows) <= 1.0
    assert per_step[0] == per_step[1] == per_step[2] == sample
    failed = build_rows(_cfg(record_failed=True, max_failed=3), run="r1", step=1, epoch=None,
                        checkpoint="c", outcomes=runs[0][1].outcomes, examples=suite.examples,
                        sample=sample, duration=1.0, created_at=0.0)
    extras = [r for r in failed if not r["sampled"]]
    assert len(extras) == min(3, sum(1 for o in runs[0][1].outcomes
                                     if not o.exact_match and o.key not in sample))
    assert all(not r["exact_match"] for r in extras)


def test_frequency():
    assert due(_cfg(), 150, None, None)
    assert not due(_cfg(enabled=False), 100, None, None)
    assert due(_cfg(frequency="steps", every_n_steps=200), 400, None, None)
    assert not due(_cfg(frequency="steps", every_n_steps=200), 300, None, None)
    assert due(_cfg(frequency="epoch"), 100, 0.4, None)
    assert not due(_cfg(frequency="epoch"), 200, 0.8, 0.4)
    assert due(_cfg(frequency="epoch"), 300, 1.2, 0.8)


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_postgres_stopped_mid_run_keeps_every_row_once(postgres, evaluated, tmp_path: Path):
    suite, runs = evaluated
    url = fresh_database(postgres)
    store = open_store(url, state_dir=tmp_path, connect_timeout=2)
    rec = _recorder(store, tmp_path, retry_seconds=0.2)
    try:
        (p1, r1, _), (p2, r2, _), (p3, r3, _) = runs
        n = rec.record(step=100, checkpoint=p1, result=r1, examples=suite.examples)
        assert n == SAMPLE
        _wait(lambda: rec.written == SAMPLE)
        postgres.stop()
        try:
            started = time.perf_counter()
            rec.record(step=200, checkpoint=p2, result=r2, examples=suite.examples)
            assert time.perf_counter() - started < 0.5  # the evaluation never waits
            _wait(lambda: rec.spooled == SAMPLE)
            assert rec.pending == SAMPLE and rec.samples()["pending"] == SAMPLE
        finally:
            restart(postgres)
        rec.record(step=300, checkpoint=p3, result=r3, examples=suite.examples)
        _wait(lambda: rec.written == 3 * SAMPLE)
        assert rec.pending == 0 and rec.failed == 0
        # a crash after writing but before emptying the spool sends rows again: no duplicate
        rows = store.query(Filters(step_min=200, step_max=200))
        rec.spool.append(rows)
        rec.pending = len(rows)
        assert rec.flush()
    finally:
        rec.close()
    check = open_store(url, state_dir=tmp_path)
    everything = list(check.iter_all(Filters()))
    assert len(everything) == 3 * SAMPLE
    assert len({(r["step"], r["example_key"]) for r in everything}) == 3 * SAMPLE
    assert sorted({r["step"] for r in everything}) == [100, 200, 300]
    assert rec.written == 3 * SAMPLE and rec.spooled == SAMPLE
    assert not rec.spool.path.exists()
    check.close()


def test_the_daemon_records_and_survives_a_broken_store(evaluated, tmp_path: Path):
    suite, runs = evaluated
    by_name = {p.name: r for p, r, _ in runs}
    checkpoints = runs[0][0].parent

    def fake_evaluate(path: Path, cfg, **kw) -> EvalResult:
        return by_name[path.name]

    results = {}
    for name, store in (("good", open_store("", state_dir=tmp_path / "good")),
                        ("broken", Store("sqlite", "/proc/self/no/such/dir/p.sqlite3"))):
        rec = _recorder(store, tmp_path / name)
        daemon = Daemon(EvaluatorConfig(settle_seconds=0), checkpoints=checkpoints,
                        data=suite_dir(runs), state_dir=tmp_path / name / "state",
                        run_name="r1", once=True, evaluate=fake_evaluate, recorder=rec)
        daemon.suite = suite
        daemon.run_forever(threading.Event())
        rec.close()
        exposition = {m.name: m.samples for m in daemon.collect()}
        results[name] = (daemon, rec, exposition)
    daemon, rec, exposition = results["good"]
    assert daemon.evaluations == 3 and rec.written == 3 * SAMPLE
    assert exposition["tunewatch_eval_predictions_written"][0].value == 3 * SAMPLE
    store = open_store("", state_dir=tmp_path / "good")
    assert store.count(Filters(run="r1")) == 3 * SAMPLE
    store.close()
    daemon, rec, exposition = results["broken"]
    assert daemon.evaluations == 3 and sum(daemon.failures.values()) == 0
    assert rec.written == 0 and rec.spooled == 3 * SAMPLE and rec.pending == 3 * SAMPLE
    assert exposition["tunewatch_eval_predictions_spool_rows"][0].value == 3 * SAMPLE


def suite_dir(runs) -> Path:
    return runs[0][0].parent.parent / "data"


def test_the_cost_estimate_follows_the_measured_speed(evaluated, tmp_path: Path):
    suite, runs = evaluated
    path, result, _ = runs[0]
    slow = cost.estimate(_cfg(), examples_per_second=10.0, suite_examples=100,
                         max_steps=600, save_steps=50)
    fast = cost.estimate(_cfg(), examples_per_second=20.0, suite_examples=100,
                         max_steps=600, save_steps=50)
    assert slow.checkpoint_seconds == pytest.approx(SAMPLE / 10.0)
    assert fast.checkpoint_seconds == pytest.approx(slow.checkpoint_seconds / 2)
    assert slow.checkpoints == 12 and slow.run_seconds == pytest.approx(12 * SAMPLE / 10.0)
    every = cost.estimate(_cfg(frequency="steps", every_n_steps=200),
                          examples_per_second=10.0, suite_examples=100, max_steps=600,
                          save_steps=50)
    assert every.checkpoints == 3
    rec = _recorder(open_store("", state_dir=tmp_path), tmp_path, background=False)
    published = []
    for speed in (5.0, 50.0):
        run = dataclasses.replace(result.run, examples_per_second=speed)
        rec.record(step=100, checkpoint=path, result=dataclasses.replace(result, run=run),
                   examples=suite.examples)
        published.append(rec.samples()["cost_checkpoint"])
    assert published[0] == pytest.approx(SAMPLE / 5.0)
    assert published[1] == pytest.approx(SAMPLE / 50.0)
    rec.close()


def test_recording_overhead_is_under_two_percent(evaluated, tmp_path: Path):
    """What the evaluation thread pays (picking the rows) against one evaluation; the
    write itself runs on the recorder's thread. Both are reported."""
    suite, runs = evaluated
    path, result, seconds = runs[-1]
    rec = _recorder(open_store("", state_dir=tmp_path), tmp_path,
                    cfg={"sample_size": 50, "record_failed": True})
    started = time.perf_counter()
    for i in range(5):
        rec.record(step=1000 + i, checkpoint=path, result=result, examples=suite.examples)
    on_thread = (time.perf_counter() - started) / 5
    started = time.perf_counter()
    rec.close()
    print(f"recording: {on_thread * 1e3:.2f} ms on the evaluation thread, "
          f"{(time.perf_counter() - started) / 5 * 1e3:.2f} ms writing, "
          f"evaluation {seconds:.2f} s")
    assert on_thread < 0.02 * seconds
