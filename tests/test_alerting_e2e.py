"""End to end on 127.0.0.1: a damaged checkpoint makes EvalRegression reach the webhook.

Real parts all the way: the tiny model's checkpoints, `tunewatch evaluate`, Prometheus with
the repository's eval alert rules (unchanged, `for: 1m` included), Alertmanager with the
repository's routing (group_wait shortened), and `tunewatch alert-log` as the receiver. The
regression is made as regressions happen: noise added to the weights of the best checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import Alertmanager, Prometheus, Tunewatch, free_port, http_get, wait_for

from tunewatch.config import load_config
from tunewatch.stack import render_alertmanager_config
from tunewatch.tinymodel import degrade_checkpoint

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def notifications(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def regression_alerts(path: Path) -> list[dict[str, Any]]:
    return [a for n in notifications(path) if n["status"] == "firing" for a in n["alerts"]
            if a["labels"]["alertname"] == "EvalRegression" and a["status"] == "firing"]


@pytest.fixture
def pipeline(tmp_path: Path, tiny_run) -> Iterator[dict[str, Any]]:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for src in tiny_run.checkpoints:
        shutil.copytree(src, ckpts / src.name)
    webhook_port = free_port()
    cfg = load_config(None, environ={"TUNEWATCH_STACK__WEBHOOK_PORT": str(webhook_port)})
    am_text = render_alertmanager_config(REPO / "alertmanager" / "alertmanager.yml", cfg)
    am_text = am_text.replace("group_wait: 30s", "group_wait: 1s")
    log_file = tmp_path / "alerts.jsonl"
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tunewatch", "alert-log", "--web.listen-address",
         f"127.0.0.1:{webhook_port}", "--file", str(log_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp_path / "am").mkdir()
    (tmp_path / "prom").mkdir()
    am = Alertmanager(tmp_path / "am", am_text)
    prom = Prometheus(tmp_path / "prom")
    daemon = Tunewatch("evaluator", tmp_path)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{webhook_port}/")[0] == 200, 30,
                 "alert-log")
        am.start()
        prom.alertmanager_urls = [f"127.0.0.1:{am.port}"]
        prom.rule_files = [str(REPO / "prometheus" / "rules" / "eval.alerts.yml")]
        prom.start()
        daemon.start(["evaluate", "--checkpoints", str(ckpts), "--data",
                      str(tiny_run.data_dir), "--state-dir", str(tmp_path / "state")],
                     env={"TUNEWATCH_RUN": "e2e"})
        prom.add_target("tunewatch-evaluator", daemon.address, {"host": "eval1", "role": "eval"})
        prom.wait_up("tunewatch-evaluator")
        yield {"prom": prom, "ckpts": ckpts, "log": log_file}
    finally:
        daemon.stop()
        prom.stop()
        am.stop()
        receiver.terminate()
        receiver.wait(timeout=10)


def test_a_damaged_checkpoint_pages_with_the_step_and_the_drop(pipeline: dict[str, Any]):
    prom: Prometheus = pipeline["prom"]
    prom.wait_value('tunewatch_eval_checkpoint_step{job="tunewatch-evaluator"}',
                    lambda v: v == 300, timeout=120)
    # Healthy checkpoints rising: nothing may fire.
    assert prom.value("count(ALERTS{alertname=\"EvalRegression\"})") is None
    written = time.monotonic()
    degrade_checkpoint(pipeline["ckpts"] / "checkpoint-300", pipeline["ckpts"] / "checkpoint-301",
                       noise=1.0, seed=0)
    wait_for(lambda: regression_alerts(pipeline["log"]), 240,
             "EvalRegression at the webhook")
    latency = time.monotonic() - written
    log.info("checkpoint written -> notification received: %.1f s", latency)
    alerts = regression_alerts(pipeline["log"])
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
    receivers = {n["receiver"] for n in notifications(pipeline["log"])
                 for a in n["alerts"] if a["labels"].get("severity") == "critical"}
    assert receivers == {"pager"}
