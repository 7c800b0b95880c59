"""End to end on 127.0.0.1: a damaged checkpoint makes EvalRegression reach the webhook.

Real parts all the way: the tiny model's checkpoint, `tunewatch evaluate`, Prometheus with the
repository's eval alert rules (unchanged, `for: 1m` included), Alertmanager with the
repository's routing (group_wait shortened), and `tunewatch alert-log` as the receiver.

The regression is real by construction, on any machine: the suite is the last checkpoint's
answer key (its own greedy answers as the golden ones), so that checkpoint answers it right,
and the damaged copy has every weight zeroed, so it answers nothing right
(tunewatch.demo.tinymodel.blank_checkpoint). What the test asserts are rules: the drop and the
p-value Prometheus reports equal those computed again from the per-example results in the
evaluator's state file, and the alert fires because those pass the configured thresholds.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paired_reference import is_regression, pairs
from services import AlertPipeline, wait_for

from tunewatch.core.config import EvaluatorConfig
from tunewatch.demo.tinymodel import blank_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


@pytest.fixture
def pipeline(tmp_path: Path, tiny_run, answer_key: Path) -> Iterator[AlertPipeline]:
    # One healthy checkpoint: with no baseline before it, nothing can regress until the
    # damaged one arrives.
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    last = tiny_run.checkpoints[-1]
    shutil.copytree(last, ckpts / last.name)
    pipe = AlertPipeline(tmp_path, REPO, group_wait="1s")
    try:
        yield pipe.start(ckpts, answer_key, run="e2e", host="eval1")
    finally:
        pipe.stop()


def test_a_damaged_checkpoint_pages_with_the_step_and_the_drop(pipeline: AlertPipeline):
    prom = pipeline.prom
    ckpts = pipeline.workdir / "checkpoints"
    step = 'tunewatch_eval_checkpoint_step{job="tunewatch-evaluator"}'
    prom.wait_value(step, lambda v: v == 300, timeout=120)
    # The healthy checkpoint alone: nothing may fire.
    assert prom.value("count(ALERTS{alertname=\"EvalRegression\"})") is None
    written = time.monotonic()
    blank_checkpoint(ckpts / "checkpoint-300", ckpts / "checkpoint-301")
    prom.wait_value(step, lambda v: v == 301, timeout=240)
    sel = 'job="tunewatch-evaluator",baseline="previous"'
    # The comparisons follow the measurement: wait for the one against step 300.
    prom.wait_value(f"tunewatch_eval_baseline_step{{{sel}}}", lambda v: v == 300, timeout=60)

    # The per-example results the evaluator kept, and what follows from them.
    state = json.loads((pipeline.workdir / "state" / "state.json").read_text())
    good, bad = state["outcomes"]["300"], state["outcomes"]["301"]
    assert not any(em for em, _d in bad.values()), "a blank checkpoint answers nothing right"
    paired = pairs(bad, good)
    assert paired.fixed == 0 and paired.broken == sum(em for em, _d in good.values())
    rules = EvaluatorConfig().regression
    overall_fires = paired.is_drop(rules.min_drop_overall, rules.max_p_value)
    assert overall_fires, ("the answer key makes checkpoint-300 right on enough examples for "
                           f"a significant drop: {paired}")
    assert is_regression(bad, good, rules)
    drop = prom.value(f"-tunewatch_eval_exact_match_difference_ratio{{{sel}}}")
    assert drop == pytest.approx(paired.drop, abs=1e-9)
    p_value = prom.value(f"tunewatch_eval_regression_p_value{{{sel}}}")
    assert p_value == pytest.approx(paired.p_value, rel=1e-6, abs=1e-300)
    assert prom.value(f"tunewatch_eval_regression{{{sel}}}") == 1

    wait_for(lambda: pipeline.firing("EvalRegression"), 240, "EvalRegression at the webhook")
    latency = time.monotonic() - written
    log.info("checkpoint written -> notification received: %.1f s", latency)
    alerts = pipeline.firing("EvalRegression")
    overall = [a for a in alerts if a["labels"]["severity"] == "critical"]
    assert overall, alerts
    alert = overall[0]
    assert alert["labels"]["run"] == "e2e" and alert["labels"]["host"] == "eval1"
    text = alert["annotations"]["description"]
    assert "Run e2e: the checkpoint at step 301" in text
    assert "%" in text and "McNemar p =" in text
    assert f"{drop * 100:.4g}%" in text  # humanizePercentage
    receivers = {n["receiver"] for n in pipeline.notifications()
                 for a in n["alerts"] if a["labels"].get("severity") == "critical"}
    assert receivers == {"pager"}
