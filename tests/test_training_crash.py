"""A trainer that raises, and one killed with SIGKILL: each shows `crashed` in Prometheus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import free_port, http_get, promtool_check_metrics, wait_for

TRAINER = """\
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from exporters.training import PrometheusCallback
from tunewatch.demo import tinymodel
from tunewatch.demo.trainer import PaceCallback

address, out, raise_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])


class Boom(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == raise_at:
            raise RuntimeError(f"boom at step {raise_at}")


torch.set_num_threads(1)
spec = tinymodel.TinyModelSpec(train_examples=400)
pairs = tinymodel.training_pairs(spec.train_examples, 0)
tokenizer = tinymodel.build_tokenizer(spec, pairs)
model = tinymodel.build_model(spec, tokenizer, 0)
callback = PrometheusCallback(listen_address=address, run="crash-test", crash_grace_seconds=120)
tinymodel.train(model, tokenizer, pairs, out, max_steps=10_000, save_steps=10_000, seed=0,
                spec=spec, callbacks=[callback, Boom(), PaceCallback(0.1)])
"""


class Trainer:
    def __init__(self, tmp: Path, name: str, raise_at: int, repo_root: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = tmp / f"{name}.log"
        script = tmp / "trainer.py"
        script.write_text(TRAINER)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), self.address, str(tmp / name), str(raise_at)],
                stdout=log, stderr=subprocess.STDOUT, cwd=repo_root, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(repo_root)})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def trainers(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Iterator[dict]:
    """Both trainers start at once: their imports and model builds overlap."""
    tmp = tmp_path_factory.mktemp("crash")
    started = {"raises": Trainer(tmp, "raises", 5, repo_root),
               "killed": Trainer(tmp, "killed", -1, repo_root)}
    yield started
    for trainer in started.values():
        trainer.stop()


def test_uncaught_exception_publishes_crashed(prometheus, trainers: dict):
    trainer = trainers["raises"]
    prometheus.add_target("training-raises", trainer.address)
    try:
        prometheus.wait_value('tunewatch_training_state{job="training-raises",state="crashed"}',
                              lambda v: v == 1, timeout=90)
        assert trainer.proc.poll() is None, "the grace period keeps the process serving"
        status, body = http_get(f"http://{trainer.address}/metrics")
        text = body.decode()
        assert status == 200
        assert 'tunewatch_training_state{run="crash-test",state="crashed"} 1.0' in text
        assert 'tunewatch_training_step{run="crash-test"} 5.0' in text
        assert promtool_check_metrics(text) == ""
        # The previous excepthook still ran: the traceback is in the trainer's output.
        wait_for(lambda: "RuntimeError: boom at step 5" in trainer.log.read_text(), 10,
                 "the traceback in the trainer's log")
    finally:
        prometheus.remove_target("training-raises")
        trainer.stop()


def test_killed_trainer_is_crashed_through_the_rule(prometheus, trainers: dict, repo_root: Path):
    trainer = trainers["killed"]
    prometheus.set_rule_files([repo_root / "prometheus" / "rules" / "training.rules.yml"])
    prometheus.add_target("training-killed", trainer.address)
    try:
        prometheus.wait_value('tunewatch_training_state{job="training-killed",state="training"}',
                              lambda v: v == 1, timeout=90)
        assert prometheus.value('run:tunewatch_training_crashed:max{job="training-killed"}') in (
            0.0, None)
        os.killpg(trainer.proc.pid, signal.SIGKILL)
        trainer.proc.wait(10)
        prometheus.wait_value('run:tunewatch_training_crashed:max{job="training-killed"}',
                              lambda v: v == 1, timeout=30)
    finally:
        prometheus.remove_target("training-killed")
        trainer.stop()
