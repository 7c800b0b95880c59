"""PrometheusCallback in a real transformers Trainer, scraped by a real Prometheus."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from services import free_port, http_get, promtool_check_metrics

from exporters.server import ServerStartError
from exporters.training import PrometheusCallback, TrainingMetrics, serve
from tunewatch import tinymodel
from tunewatch.demo import PaceCallback

JOB = "training-callback"
MAX_STEPS = 150


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(url: str) -> str:
    status, body = http_get(f"{url}/metrics")
    assert status == 200
    return body.decode()


@pytest.fixture(scope="module")
def tiny_parts():
    import torch

    torch.set_num_threads(1)  # 2-CPU test machines: keep step times steady
    spec = tinymodel.TinyModelSpec()
    pairs = tinymodel.training_pairs(spec.train_examples, 0)
    tokenizer = tinymodel.build_tokenizer(spec, pairs)
    return spec, pairs, tokenizer


def test_trainer_run_seen_by_prometheus(prometheus, tiny_parts, tmp_path: Path, repo_root: Path):
    spec, pairs, tokenizer = tiny_parts
    prometheus.set_rule_files([repo_root / "prometheus" / "rules" / "training.rules.yml"])
    port = free_port()
    callback = PrometheusCallback(listen_address=f"127.0.0.1:{port}", run="cb-test",
                                  model_name="tiny-qwen3", crash_grace_seconds=0)
    server = callback.start_server()  # early, so Prometheus is already scraping at step 1
    prometheus.add_target(JOB, f"127.0.0.1:{port}", labels={"host": "t", "role": "training"})
    prometheus.wait_up(JOB)
    model = tinymodel.build_model(spec, tokenizer, 0)
    done: dict[str, float] = {}

    def train() -> None:
        tinymodel.train(model, tokenizer, pairs, tmp_path / "ckpt", max_steps=MAX_STEPS,
                        save_steps=75, seed=0, spec=spec,
                        callbacks=[callback, PaceCallback(0.1)])
        done["end"] = time.time()

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    try:
        sel = f'{{job="{JOB}"}}'
        first = prometheus.wait_value(f"tunewatch_training_step{sel}", lambda v: v >= 1, 60)
        # Progress equals step / max steps, as the rule records it.
        prometheus.wait_value(f"run:tunewatch_training_progress:ratio{sel}",
                              lambda v: v >= 0.4, 60)
        result = prometheus.query(
            f"run:tunewatch_training_remaining_seconds:rate5m{sel}"
            f" and on() (run:tunewatch_training_progress:ratio{sel} >= 0.4)")
        assert len(result) == 1, result
        eta_at, eta = float(result[0]["value"][0]), float(result[0]["value"][1])
        step = prometheus.value(f"tunewatch_training_step{sel}")
        assert step is not None and step > first
        assert prometheus.value(f"tunewatch_training_max_steps{sel}") == MAX_STEPS
        ratio = prometheus.value(f"run:tunewatch_training_progress:ratio{sel}")
        now_step = prometheus.value(f"tunewatch_training_step{sel}")
        assert ratio == pytest.approx(now_step / MAX_STEPS, abs=0.1)  # a scrape apart at most
        thread.join(120)
        assert not thread.is_alive()
        real = done["end"] - eta_at
        # The ETA sample is up to one scrape plus one rule evaluation old when queried
        # (1 s each here): that lag is allowed on top of the 25%.
        lag = 2 * 1.0
        assert abs(eta - real) <= 0.25 * real + lag, f"ETA {eta:.1f}s, really {real:.1f}s"
        prometheus.wait_value(f'tunewatch_training_state{{job="{JOB}",state="completed"}}',
                              lambda v: v == 1, 30)
        assert prometheus.value(f"tunewatch_training_step{sel}") == MAX_STEPS
        prometheus.wait_value(f"run:tunewatch_training_progress:ratio{sel}", lambda v: v == 1)
        loss = prometheus.value(f"tunewatch_training_loss{sel}")
        assert loss is not None and 0 < loss < 10
        assert prometheus.value(f"tunewatch_training_tokens_total{sel}") > 0
        assert prometheus.value(f"tunewatch_training_checkpoints_saved_total{sel}") == 2
        assert prometheus.value(f"tunewatch_training_last_checkpoint_step{sel}") == MAX_STEPS
        assert prometheus.value(
            f'tunewatch_training_run_info{{job="{JOB}",model="tiny-qwen3",run="cb-test"}}') == 1
        text = scrape(server.url)
        assert promtool_check_metrics(text) == ""
        assert "tunewatch_training_eval_loss{" not in text  # never evaluated: absent, not 0
    finally:
        prometheus.remove_target(JOB)
        thread.join(120)
        callback.stop()


def test_tokens_absent_unless_the_trainer_counts_them(tmp_path: Path):
    """Hooks called directly with real TrainingArguments/TrainerState (no server needed)."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                             per_device_train_batch_size=4, include_num_input_tokens_seen="no")
    state = TrainerState(max_steps=10)
    callback = PrometheusCallback(listen_address="127.0.0.1:0", run="t")
    try:
        callback.on_train_begin(args, state, TrainerControl())
        for step in range(1, 4):
            state.global_step = step
            callback.on_step_end(args, state, TrainerControl())
        callback.on_log(args, state, TrainerControl(), logs={"loss": float("nan")})
        callback.on_log(args, state, TrainerControl(), logs={"loss": 1.25, "grad_norm": 2.0,
                                                             "learning_rate": 1e-3})
        callback.on_log(args, state, TrainerControl(), logs={"loss": float("inf")})
        callback.on_evaluate(args, state, TrainerControl(),
                             metrics={"eval_loss": 1.5, "eval_accuracy": 0.75,
                                      "eval_runtime": 0.2})
        text = scrape(callback.server.url)
    finally:
        callback.on_train_end(args, state, TrainerControl())
        callback.stop()
    got = samples(text)
    run = (("run", "t"),)
    assert got[("tunewatch_training_step", run)] == 3
    assert got[("tunewatch_training_samples_total", run)] == 12
    assert got[("tunewatch_training_loss", run)] == 1.25  # the non-finite ones are not the loss
    assert got[("tunewatch_training_nonfinite_loss_total", run)] == 2
    assert got[("tunewatch_training_eval_loss", run)] == 1.5
    assert got[("tunewatch_training_eval_metric", (("metric", "accuracy"), ("run", "t")))] == 0.75
    assert not any(name.startswith("tunewatch_training_tokens") for name, _ in got)
    assert "runtime" not in text
    assert promtool_check_metrics(text) == ""


def test_non_main_process_serves_nothing(tmp_path: Path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    state = TrainerState(max_steps=10, is_world_process_zero=False)
    callback = PrometheusCallback(listen_address="127.0.0.1:0")
    callback.on_train_begin(args, state, TrainerControl())
    state.global_step = 1
    callback.on_step_end(args, state, TrainerControl())
    assert callback.server is None
    assert callback.metrics.state == "idle"


def test_hand_written_loop_with_the_api():
    metrics = TrainingMetrics(run="loop", model_name="my-model", dataset="d1", regime="r1")
    server = serve(metrics, "127.0.0.1:0")
    try:
        metrics.set_state("training")
        tokens = 0
        for step in range(1, 6):
            tokens += 100
            metrics.update(step=step, max_steps=5, epoch=step / 5, loss=2.0 / step,
                           learning_rate=1e-4, tokens=tokens, samples=step * 8)
        metrics.checkpoint_saved(5)
        metrics.set_state("completed")
        text = scrape(server.url)
    finally:
        server.stop()
    got = samples(text)
    run = (("run", "loop"),)
    assert got[("tunewatch_training_step", run)] == 5
    assert got[("tunewatch_training_tokens_total", run)] == 500
    assert got[("tunewatch_training_loss", run)] == pytest.approx(0.4)
    assert got[("tunewatch_training_checkpoints_saved_total", run)] == 1
    assert got[("tunewatch_training_state", (("run", "loop"), ("state", "completed")))] == 1
    assert sum(v for (name, _), v in got.items() if name == "tunewatch_training_state") == 1
    assert got[("tunewatch_training_run_info", (("dataset", "d1"), ("model", "my-model"),
                                                ("regime", "r1"), ("run", "loop")))] == 1
    assert not any(name.endswith("_created") for name, _ in got)
    assert "tunewatch_training_grad_norm{" not in text  # never given: absent, not 0
    assert promtool_check_metrics(text) == ""
    with pytest.raises(ValueError, match="expected one of"):
        metrics.set_state("running")


def test_taken_port_is_a_clear_error():
    first = serve(TrainingMetrics(run="a"), "127.0.0.1:0")
    try:
        with pytest.raises(ServerStartError, match=f"127.0.0.1:{first.port}"):
            PrometheusCallback(listen_address=f"127.0.0.1:{first.port}").start_server()
    finally:
        first.stop()
