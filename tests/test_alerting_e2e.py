"""End to end on 127.0.0.1: a damaged checkpoint makes EvalRegression reach the webhook.

Real parts all the way: the tiny model's checkpoints, `tunewatch evaluate`, Prometheus with
the repository's eval alert rules (unchanged, `for: 1m` included), Alertmanager with the
repository's routing (group_wait shortened), and `tunewatch alert-log` as the receiver. The
regression is made as regressions happen: noise added to the weights of the best checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import AlertPipeline, wait_for

from tunewatch.tinymodel import degrade_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


@pytest.fixture
def pipeline(tmp_path: Path, tiny_run) -> Iterator[AlertPipeline]:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for src in tiny_run.checkpoints:
        shutil.copytree(src, ckpts / src.name)
    pipe = AlertPipeline(tmp_path, REPO, group_wait="1s")
    try:
        yield pipe.start(ckpts, tiny_run.data_dir, run="e2e", host="eval1")
    finally:
        pipe.stop()


def test_a_damaged_checkpoint_pages_with_the_step_and_the_drop(pipeline: AlertPipeline):
    prom = pipeline.prom
    ckpts = pipeline.workdir / "checkpoints"
    prom.wait_value('tunewatch_eval_checkpoint_step{job="tunewatch-evaluator"}',
                    lambda v: v == 300, timeout=120)
    # Healthy checkpoints rising: nothing may fire.
    assert prom.value("count(ALERTS{alertname=\"EvalRegression\"})") is None
    written = time.monotonic()
    degrade_checkpoint(ckpts / "checkpoint-300", ckpts / "checkpoint-301", noise=1.0, seed=0)
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
    drop = prom.value('-tunewatch_eval_exact_match_difference_ratio{baseline="previous"}')
    assert drop is not None and drop >= 0.05
    assert f"{drop * 100:.4g}%" in text  # humanizePercentage
    receivers = {n["receiver"] for n in pipeline.notifications()
                 for a in n["alerts"] if a["labels"].get("severity") == "critical"}
    assert receivers == {"pager"}
