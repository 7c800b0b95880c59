"""`tunewatch evaluate` end to end on the tiny model's real checkpoints and a real Prometheus.

One daemon process lives through the story a run tells: two checkpoints and a broken one are
there at start, a third is written slowly later, the daemon is restarted. Each step is
checked by what Prometheus scraped (PromQL) and by the state file; `promtool check metrics`
checks the exposition.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paired_reference import is_regression, pairs
from services import free_port, http_get, wait_for

from tunewatch.core.config import EvaluatorConfig

pytestmark = pytest.mark.slow

KEEP = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", "trainer_state.json")
WRITE_ORDER = [name for name in KEEP if name != "trainer_state.json"]


def copy_checkpoint(source: Path, target: Path, names=KEEP) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    return target


class Evaluator:
    """A `tunewatch evaluate` subprocess on a free port."""

    def __init__(self, workdir: Path, checkpoints: Path, data: Path, state: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"evaluator-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
        env.update({
            "TUNEWATCH_RUN": "test-run",
            "TUNEWATCH_EVALUATOR__SETTLE_SECONDS": "30",
            "TUNEWATCH_EVALUATOR__RESCAN_SECONDS": "30",
            "TUNEWATCH_EVALUATOR__RETRY_BACKOFF_SECONDS": "600",
            "TUNEWATCH_EVALUATOR__DEVICE": "cpu",
            "TUNEWATCH_EVALUATOR__BATCH_SIZE": "64",
        })
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunewatch", "evaluate", "--checkpoints", str(checkpoints),
             "--data", str(data), "--state-dir", str(state),
             "--web.listen-address", f"127.0.0.1:{self.port}"],
            cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.proc.poll() is None and http_get(self.url + "/-/healthy")[0]
                 == 200, 60, f"evaluator on {self.url}: {self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def metrics(self) -> str:
        status, body = http_get(self.url + "/metrics")
        assert status == 200
        return body.decode()

    def sample(self, name: str, labels: str = "") -> float | None:
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.metrics().splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def test_daemon_series(tiny_run, prometheus, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    state_dir = tmp_path / "state"
    c100, c200, c300 = tiny_run.checkpoints
    copy_checkpoint(c100, checkpoints / "checkpoint-100")
    copy_checkpoint(c200, checkpoints / "checkpoint-200")
    broken = copy_checkpoint(c200, checkpoints / "checkpoint-150")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    ev = Evaluator(tmp_path, checkpoints, tiny_run.data_dir, state_dir)
    try:
        prometheus.add_target("evaluator", f"127.0.0.1:{ev.port}", labels={"role": "eval"})
        prometheus.wait_up("evaluator")
        # The two good ones evaluated, the broken one a labelled failure.
        prometheus.wait_value('tunewatch_eval_evaluations_total{job="evaluator"}',
                              lambda v: v == 2, timeout=60)
        prometheus.wait_value('tunewatch_eval_failures_total{job="evaluator",reason="weights"}',
                              lambda v: v == 1)
        assert prometheus.value('tunewatch_eval_checkpoint_step{job="evaluator"}') == 200
        assert prometheus.value(
            'count(tunewatch_eval_ranking_position{job="evaluator",step="150"})') is None
        assert "reason=weights" in ev.log_text()
        assert prometheus.value('tunewatch_eval_backlog_checkpoints{job="evaluator"}') == 1

        # A checkpoint written slowly: files first, trainer_state.json last.
        target = checkpoints / "checkpoint-300"
        for name in WRITE_ORDER:
            copy_checkpoint(c300, target, [name])
            time.sleep(0.2)  # a slow writer; nothing is asserted on this pause
        assert "evaluating checkpoint-300" not in ev.log_text()
        written = time.time()
        copy_checkpoint(c300, target, ["trainer_state.json"])
        prometheus.wait_value('tunewatch_eval_checkpoint_step{job="evaluator"}',
                              lambda v: v == 300, timeout=60)
        state = json.loads((state_dir / "state.json").read_text())
        entry = state["checkpoints"]["300"]
        assert entry["status"] == "ok" and entry["attempts"] == 1
        assert entry["evaluated_at"] >= written
        assert ev.sample("tunewatch_eval_failures_total", 'reason="config"') == 0

        # Each checkpoint's exact match, as Prometheus sees it, is the share of its examples
        # the state file keeps as right (whatever the trained model gets right here).
        outcomes = state["outcomes"]
        prometheus.wait_value(  # the comparisons and the ranking follow the measurement
            'tunewatch_eval_baseline_step{job="evaluator",baseline="previous"}',
            lambda v: v == 200)
        ems = [prometheus.value(
            f'tunewatch_eval_ranking_exact_match_ratio{{job="evaluator",step="{s}"}}')
            for s in (100, 200, 300)]
        for s, em in zip(("100", "200", "300"), ems, strict=True):
            assert len(outcomes[s]) == 150
            assert em == pytest.approx(sum(v[0] for v in outcomes[s].values()) / 150), s
        overall = prometheus.value(
            'tunewatch_eval_exact_match_ratio{job="evaluator",difficulty="all"}')
        assert overall == pytest.approx(ems[2])
        # The comparison with the previous checkpoint follows from the paired outcomes.
        paired = pairs(outcomes["300"], outcomes["200"])
        prev = 'job="evaluator",baseline="previous"'
        assert prometheus.value(
            f"tunewatch_eval_regression_p_value{{{prev}}}") == pytest.approx(
                paired.p_value, rel=1e-9, abs=1e-300)
        assert prometheus.value(
            f"-tunewatch_eval_exact_match_difference_ratio{{{prev}}}") == pytest.approx(
                paired.drop, abs=1e-9)
        rules = EvaluatorConfig().regression
        assert prometheus.value(f"tunewatch_eval_regression{{{prev}}}") == float(
            is_regression(outcomes["300"], outcomes["200"], rules))
        mix = prometheus.value('sum(tunewatch_eval_curriculum_mix_ratio{job="evaluator"})')
        assert mix == pytest.approx(1.0)
        assert prometheus.value('tunewatch_eval_lag_steps{job="evaluator"}') == 0
        # Examples evaluated: each successful evaluation adds the examples it scored.
        scored = sum(state["checkpoints"][s]["examples"] for s in ("100", "200", "300"))
        assert scored == sum(len(outcomes[s]) for s in ("100", "200", "300"))
        assert ev.sample("tunewatch_eval_examples_evaluated_total") == scored
        assert prometheus.value(
            'tunewatch_eval_run_info{job="evaluator",run="test-run"}') == 1
        assert prometheus.value('time() - tunewatch_eval_last_success_timestamp_seconds'
                                '{job="evaluator"}') < 120
        # Hard examples: each checkpoint's wrong answers, one row each.
        rows = [json.loads(line)
                for path in (state_dir / "hard_examples").glob("hard_examples_*.jsonl")
                for line in path.read_text().splitlines()]
        for s in ("100", "200", "300"):
            wrong = sum(1 for em, _d in outcomes[s].values() if not em)
            assert sum(1 for r in rows if r["step"] == int(s)) == wrong, s
        for record in rows:
            assert record["messages"][-1]["role"] == "assistant"
            assert {"pattern", "failure_mode", "difficulty", "step"} <= set(record)

        # promtool finds nothing in the exposition.
        check = subprocess.run(["promtool", "check", "metrics"], input=ev.metrics(),
                               capture_output=True, text=True, check=False, timeout=30)
        assert check.returncode == 0 and check.stdout + check.stderr == "", check.stdout
    finally:
        ev.stop()

    # A restart resumes: the same figures, nothing evaluated again.
    again = Evaluator(tmp_path, checkpoints, tiny_run.data_dir, state_dir)
    try:
        wait_for(lambda: again.sample("tunewatch_eval_newest_checkpoint_step") == 300, 30,
                 "the restarted evaluator's first scan")
        assert again.sample("tunewatch_eval_checkpoint_step") == 300
        assert again.sample("tunewatch_eval_exact_match_ratio",
                            'difficulty="all"') == pytest.approx(ems[2])
        assert again.sample("tunewatch_eval_evaluations_total") == 0
        assert again.sample("tunewatch_eval_examples_evaluated_total") == 0
        assert "evaluating" not in again.log_text()
        # The broken checkpoint, fixed on disk, is tried afresh and evaluated.
        copy_checkpoint(c200, broken, ["model.safetensors"])
        wait_for(lambda: again.sample("tunewatch_eval_evaluations_total") == 1, 60,
                 "the repaired checkpoint's evaluation")
        assert again.sample("tunewatch_eval_checkpoint_step") == 300  # an older step
        assert again.log_text().count("evaluating checkpoint-") == 1
        repaired = json.loads((state_dir / "state.json").read_text())["checkpoints"]["150"]
        assert again.sample("tunewatch_eval_examples_evaluated_total") == repaired["examples"]
    finally:
        again.stop()
        prometheus.remove_target("evaluator")


def _evaluate_once(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
    env["TUNEWATCH_EVALUATOR__DEVICE"] = "cpu"
    return subprocess.run(
        [sys.executable, "-m", "tunewatch", "evaluate", "--once",
         "--web.listen-address", "127.0.0.1:0", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300,
    )


def test_once_counts_a_broken_checkpoint(tiny_run, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    copy_checkpoint(tiny_run.checkpoints[0], checkpoints / "checkpoint-100")
    broken = copy_checkpoint(tiny_run.checkpoints[1], checkpoints / "checkpoint-200")
    (broken / "tokenizer.json").unlink()
    common = ("--checkpoints", checkpoints, "--data", tiny_run.data_dir,
              "--state-dir", tmp_path / "state", "--limit", "30")
    first = _evaluate_once(*common, cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    assert "checkpoint-200" in first.stderr and "[reason=tokenizer]" in first.stderr
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["checkpoints"]["100"]["status"] == "ok"
    assert state["checkpoints"]["200"]["reason"] == "tokenizer"
    assert list(state["outcomes"]) == ["100"]  # nothing kept for the failed one
    assert [row[1] for row in state["published"]["tunewatch_eval_checkpoint_step"]] == [100.0]


def test_usage_errors(tmp_path):
    done = _evaluate_once("--limit", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert "--limit must be at least 1" in done.stderr


def test_checkpoints_wait_for_a_suite_that_comes_late(tiny_run, tmp_path):
    """A data directory that appears after the daemon started (a slow copy, a mount) costs
    no checkpoint an attempt: they wait, counted and not ready, and are evaluated then."""
    from evaluators.daemon.scheduler import Daemon

    checkpoints = tmp_path / "checkpoints"
    copy_checkpoint(tiny_run.checkpoints[0], checkpoints / "checkpoint-100")
    data = tmp_path / "data"
    cfg = EvaluatorConfig(settle_seconds=0, retry_attempts=1, device="cpu")
    daemon = Daemon(cfg, checkpoints=checkpoints, data=data, state_dir=tmp_path / "state",
                    run_name="late", limit=10)
    for scans in (1, 2, 3):
        assert daemon.step() == cfg.rescan_seconds
        assert daemon.failures["data"] == scans and daemon.backlog == 1
    assert daemon.evaluations == 0 and not daemon.state.checkpoints and not daemon.ready()
    shutil.copytree(tiny_run.data_dir, data)
    assert daemon.step() == 0.0
    assert daemon.evaluations == 1 and daemon.ready()
    assert daemon.state.checkpoints[100]["status"] == "ok"


def test_once_without_its_suite_or_checkpoints_is_an_error(tiny_run, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    copy_checkpoint(tiny_run.checkpoints[0], checkpoints / "checkpoint-100")
    common = ("--state-dir", tmp_path / "state", "--limit", "10")
    no_suite = _evaluate_once("--checkpoints", checkpoints, "--data", tmp_path / "nodata",
                              *common, cwd=tmp_path)
    assert no_suite.returncode == 1, no_suite.stderr
    assert "nothing evaluated: checkpoints wait for a suite that cannot be loaded" in (
        no_suite.stderr)
    no_dir = _evaluate_once("--checkpoints", tmp_path / "nope", "--data", tiny_run.data_dir,
                            *common, cwd=tmp_path)
    assert no_dir.returncode == 1, no_dir.stderr
    assert f"checkpoint directory {tmp_path / 'nope'} does not exist" in no_dir.stderr
    assert "Traceback" not in no_suite.stderr + no_dir.stderr


def test_a_regression_a_backlog_reveals_is_logged_once_naming_the_checkpoint(
        tiny_run, answer_key, tmp_path, caplog):
    """Newest first: the blank checkpoint-301 has no baseline until checkpoint-300 is
    evaluated after it; then its regression is logged, under its own name, once."""
    import threading

    from evaluators.daemon.scheduler import Daemon
    from tunewatch.demo.tinymodel import blank_checkpoint

    checkpoints = tmp_path / "checkpoints"
    good = copy_checkpoint(tiny_run.checkpoints[-1], checkpoints / "checkpoint-300")
    blank_checkpoint(good, checkpoints / "checkpoint-301")
    daemon = Daemon(EvaluatorConfig(settle_seconds=0, device="cpu"), checkpoints=checkpoints,
                    data=answer_key, state_dir=tmp_path / "state", run_name="b", once=True)
    with caplog.at_level("WARNING", logger="tunewatch.evaluate"):
        daemon.run_forever(threading.Event())
    assert daemon.evaluations == 2
    said = [r.getMessage() for r in caplog.records if "regresses against" in r.getMessage()]
    assert said, "the regression revealed by the backlog was never logged"
    assert all(line.startswith("checkpoint-301 regresses against the") for line in said), said
    assert len(said) == len(set(said)), said
