"""PrometheusCallback in a real transformers Trainer, scraped by a real Prometheus."""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from services import free_port, http_get, promtool_check_metrics, wait_for
from transformers import TrainerCallback

from exporters.server import ServerStartError
from exporters.training import PrometheusCallback, TrainingMetrics, serve
from tunewatch.demo import tinymodel
from tunewatch.demo.trainer import PaceCallback

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
                                      "eval_runtime": 0.2, "num_input_tokens_seen": 96})
        text = scrape(callback.server.url)
    finally:
        callback.on_train_end(args, state, TrainerControl())
        callback.stop()
    got = samples(text)
    run = (("run", "t"),)
    assert got[("tunewatch_training_step", run)] == 3
    # Steps times the effective batch (per-device batch x accumulation x processes).
    assert got[("tunewatch_training_samples_total", run)] == 3 * (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size)
    assert got[("tunewatch_training_loss", run)] == 1.25  # the non-finite ones are not the loss
    assert got[("tunewatch_training_nonfinite_loss_total", run)] == 2
    assert got[("tunewatch_training_eval_loss", run)] == 1.5
    assert got[("tunewatch_training_eval_metric", (("metric", "accuracy"), ("run", "t")))] == 0.75
    assert not any(name.startswith("tunewatch_training_tokens") for name, _ in got)
    assert "tunewatch_training_model_parameters{" not in text  # no model given: absent
    assert "runtime" not in text
    assert "num_input_tokens_seen" not in text  # the Trainer's, in every evaluation's metrics
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
        text_before_size = scrape(server.url)
        metrics.set_model_size(1_500_000_000.0, 4_000_000)
        text = scrape(server.url)
    finally:
        server.stop()
    assert "tunewatch_training_model_parameters{" not in text_before_size  # absent, not 0
    assert samples(text)[("tunewatch_training_model_parameters", (("run", "loop"),))] == 1.5e9
    assert samples(text)[("tunewatch_training_model_trainable_parameters",
                          (("run", "loop"),))] == 4e6
    for bad in (-1, 2.5, float("nan"), True, "7"):
        with pytest.raises(ValueError, match="whole number"):
            metrics.set_model_size(bad)
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


# --------------------------------------------------------------------------- model size


def test_model_size_of_the_trainers_model(tiny_parts, tmp_path: Path):
    """The real Trainer passes its model to on_train_begin: the gauges are its parameter
    counts (tied embeddings once), and a frozen layer leaves the trainable count."""
    spec, pairs, tokenizer = tiny_parts
    model = tinymodel.build_model(spec, tokenizer, 0)
    for parameter in model.model.layers[0].parameters():
        parameter.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == (model.num_parameters(),
                                  model.num_parameters(only_trainable=True))
    callback = PrometheusCallback(listen_address="127.0.0.1:0", run="size",
                                  crash_grace_seconds=0)
    try:
        trainer = tinymodel.train(model, tokenizer, pairs, tmp_path / "ckpt", max_steps=2,
                                  save_steps=2, seed=0, spec=spec, callbacks=[callback])
        text = scrape(callback.server.url)
    finally:
        callback.stop()
    assert trainer.state.global_step == 2
    got = samples(text)
    run = (("run", "size"),)
    assert got[("tunewatch_training_model_parameters", run)] == total
    assert got[("tunewatch_training_model_trainable_parameters", run)] == trainable
    assert 0 < trainable < total
    assert not any(v for (name, _), v in got.items()
                   if name == "tunewatch_training_callback_errors_total")
    assert promtool_check_metrics(text) == ""


class Unreadable:
    """A model whose parameters cannot be listed (what a wrapper we do not know might be)."""

    def parameters(self) -> Any:
        raise RuntimeError("parameters are on another host")


def test_unreadable_model_costs_only_the_size(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture):
    """A model that cannot be counted is logged once and counted under on_train_begin; the
    rest of on_train_begin (state, server) still happens. A model without parameters
    publishes no size either: never a 0 the MFU rule would read as the model's size."""
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    state = TrainerState(max_steps=10)
    callback = PrometheusCallback(listen_address="127.0.0.1:0", run="u", crash_grace_seconds=0)
    try:
        with caplog.at_level(logging.WARNING, logger="tunewatch.training"):
            for _ in range(2):
                callback.on_train_begin(args, state, TrainerControl(), model=Unreadable())
            callback.on_train_begin(args, state, TrainerControl(), model=torch.nn.Module())
        text = scrape(callback.server.url)
    finally:
        callback.stop()
    got = samples(text)
    assert got[("tunewatch_training_callback_errors_total",
                (("reason", "on_train_begin"), ("run", "u")))] == 2
    assert len(log_lines(caplog, "PrometheusCallback.on_train_begin failed")) == 1
    assert len(log_lines(caplog, "no parameters")) == 1
    assert got[("tunewatch_training_state", (("run", "u"), ("state", "training")))] == 1
    assert "tunewatch_training_model_parameters{" not in text
    assert "tunewatch_training_model_trainable_parameters{" not in text


# --------------------------------------------------------------------------- never harm training


def log_lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


def test_taken_port_never_stops_training(tiny_parts, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture):
    """The real Trainer on a taken port trains to the end; /metrics appears once it frees."""
    spec, pairs, tokenizer = tiny_parts
    port = free_port()
    address = f"127.0.0.1:{port}"
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    callback = PrometheusCallback(listen_address=address, run="taken", crash_grace_seconds=0,
                                  bind_retry_seconds=0.2)
    try:
        with caplog.at_level(logging.WARNING, logger="tunewatch.training"):
            trainer = tinymodel.train(tinymodel.build_model(spec, tokenizer, 0), tokenizer,
                                      pairs, tmp_path / "ckpt", max_steps=20, save_steps=10,
                                      seed=0, spec=spec, callbacks=[callback])
        assert trainer.state.global_step == 20
        assert callback.server is None, "the port is still taken"
        warnings = log_lines(caplog, address)
        assert len(warnings) == 1 and "in use" in warnings[0], warnings
        blocker.close()
        texts: list[str] = []

        def served() -> bool:
            status, body = http_get(f"http://{address}/metrics")
            texts.append(body.decode())
            return status == 200

        wait_for(served, 30, f"/metrics on {address} once the port is free")
    finally:
        blocker.close()
        callback.stop()
    got = samples(texts[-1])
    run = (("run", "taken"),)
    assert got[("tunewatch_training_step", run)] == trainer.state.global_step
    assert got[("tunewatch_training_state", (("run", "taken"), ("state", "completed")))] == 1
    assert got[("tunewatch_training_exporter_bind_failures_total",
                (("reason", "address_in_use"), ("run", "taken")))] >= 1
    assert not any(v for (name, _), v in got.items()
                   if name == "tunewatch_training_callback_errors_total")
    args = trainer.args
    assert got[("tunewatch_training_samples_total", run)] == trainer.state.global_step * (
        args.train_batch_size * args.gradient_accumulation_steps * args.world_size)
    last_loss = [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]
    assert got[("tunewatch_training_loss", run)] == pytest.approx(last_loss)
    assert got[("tunewatch_training_logged_metric", (("metric", "loss"), ("run", "taken")))] == (
        pytest.approx(last_loss))
    assert promtool_check_metrics(texts[-1]) == ""


class UnreadableValueLogger(TrainerCallback):
    """Adds values to the Trainer's logs before the PrometheusCallback sees them, as TRL and
    users do: a reward on every log, and on every second log a tensor that cannot be read
    (a meta-device tensor: float() raises RuntimeError inside the callback's on_log)."""

    def __init__(self) -> None:
        self.logs: list[tuple[bool, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
               **kwargs: Any) -> None:
        import torch

        unreadable = len(self.logs) % 2 == 1
        reward = state.global_step / 7 + len(self.logs)
        logs["reward"] = reward
        if unreadable:
            logs["stats"] = torch.empty((), device="meta")
        self.logs.append((unreadable, reward))


def test_failing_hook_is_counted_and_training_goes_on(tiny_parts, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture):
    spec, pairs, tokenizer = tiny_parts
    injector = UnreadableValueLogger()
    callback = PrometheusCallback(listen_address="127.0.0.1:0", run="hook",
                                  crash_grace_seconds=0)
    try:
        with caplog.at_level(logging.WARNING, logger="tunewatch.training"):
            trainer = tinymodel.train(tinymodel.build_model(spec, tokenizer, 0), tokenizer,
                                      pairs, tmp_path / "ckpt", max_steps=20, save_steps=10,
                                      seed=0, spec=spec, callbacks=[injector, callback])
        text = scrape(callback.server.url)
    finally:
        callback.stop()
    assert trainer.state.global_step == 20
    failed = sum(1 for unreadable, _ in injector.logs if unreadable)
    assert failed >= 2
    got = samples(text)
    errors = {dict(labels)["reason"]: v for (name, labels), v in got.items()
              if name == "tunewatch_training_callback_errors_total"}
    assert errors.pop("on_log") == failed
    assert set(errors.values()) == {0}, errors
    assert len(log_lines(caplog, "PrometheusCallback.on_log failed")) == 1  # once per kind
    # The logs that could be read are all published: the reward of the last of them.
    last_good = [reward for unreadable, reward in injector.logs if not unreadable][-1]
    assert got[("tunewatch_training_logged_metric", (("metric", "reward"), ("run", "hook")))] == (
        pytest.approx(last_good))
    assert got[("tunewatch_training_step", (("run", "hook"),))] == 20
    assert got[("tunewatch_training_state", (("run", "hook"), ("state", "completed")))] == 1


def test_every_numeric_log_key_is_published(tmp_path: Path):
    """on_log publishes every numeric key (first N names), counts the rest and non-finite
    values, ignores text; logs without a loss count too; the eval family has the same cap."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    cap = 4
    logs = [
        {"rewards/accuracy": 0.5, "kl": 0.01, "completion_length": 37, "note": "text",
         "flag": True, "hist": [1, 2]},
        {"loss": 1.5, "kl": float("nan"), "grad_norm": float("inf"), "learning_rate": 1e-3,
         "extra": 2.0},
        {"kl": 0.02, "rewards/accuracy": float("-inf"), "mean_token_accuracy": 0.9},
    ]
    numeric = [[k for k, v in entry.items()
                if isinstance(v, int | float) and not isinstance(v, bool)] for entry in logs]
    names: list[str] = []
    for keys in numeric:
        names += [k for k in keys if k not in names]
    admitted = names[:cap]
    dropped = sum(1 for keys in numeric for k in keys if k not in admitted)
    last_finite = {k: v for entry in logs for k, v in entry.items()
                   if k in admitted and math.isfinite(v)}
    nonfinite = {k: sum(1 for entry in logs if k in entry and not math.isfinite(entry[k]))
                 for k in admitted}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    state = TrainerState(max_steps=10)
    callback = PrometheusCallback(listen_address="127.0.0.1:0", run="t",
                                  max_logged_metrics=cap)
    try:
        callback.on_train_begin(args, state, TrainerControl())
        for entry in logs:
            callback.on_log(args, state, TrainerControl(), logs=dict(entry))
        callback.on_evaluate(args, state, TrainerControl(), metrics={
            f"eval_m{i}": float(i) for i in range(cap + 2)})
        text = scrape(callback.server.url)
    finally:
        callback.stop()
    got = samples(text)

    def by_metric(family: str) -> dict[str, float]:
        return {dict(labels)["metric"]: v for (name, labels), v in got.items()
                if name == family}

    assert by_metric("tunewatch_training_logged_metric") == pytest.approx(last_finite)
    assert by_metric("tunewatch_training_logged_metric_nonfinite_total") == {
        k: n for k, n in nonfinite.items() if n}
    assert len(by_metric("tunewatch_training_eval_metric")) == cap
    run = (("run", "t"),)
    assert got[("tunewatch_training_logged_metrics_dropped_total", run)] == dropped + 2
    assert got[("tunewatch_training_loss", run)] == 1.5
    assert got[("tunewatch_training_learning_rate", run)] == 1e-3
    assert ("tunewatch_training_grad_norm", run) not in got  # only ever infinite
    assert not any(v != v or abs(v) == math.inf for v in got.values())
    assert promtool_check_metrics(text) == ""


def test_training_settings_come_from_the_config(repo_root: Path):
    """tunewatch.yml's training keys are the callback's defaults; bad values name the key."""
    import inspect

    from tunewatch.core.config import ConfigError, load_config

    cfg = load_config(repo_root / "tunewatch.yml", environ={})
    params = inspect.signature(PrometheusCallback).parameters
    for key in ("bind_retry_seconds", "max_logged_metrics", "crash_grace_seconds"):
        assert params[key].default == getattr(cfg.training, key), key
    for key, value in (("BIND_RETRY_SECONDS", "0"), ("MAX_LOGGED_METRICS", "-1")):
        with pytest.raises(ConfigError, match=f"training.{key.lower()}"):
            load_config(repo_root / "tunewatch.yml",
                        environ={f"TUNEWATCH_TRAINING__{key}": value})


def test_ctrl_c_is_marked_crashed_and_the_log_says_it_exits_now(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture):
    """An uncaught KeyboardInterrupt skips the crash grace period (a person is waiting), and
    the log line says so instead of promising /metrics for the grace period."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    callback = PrometheusCallback(listen_address="127.0.0.1:0", run="c", crash_grace_seconds=120)
    try:
        callback.on_train_begin(args, TrainerState(max_steps=10), TrainerControl())
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="tunewatch.training"):
            callback._excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
        assert time.monotonic() - started < 60  # no 120 s grace
        text = scrape(callback.server.url)
    finally:
        callback.stop()
    assert log_lines(caplog, "training crashed (KeyboardInterrupt); marked crashed, exiting now")
    assert not log_lines(caplog, "serving /metrics")
    assert samples(text)[("tunewatch_training_state", (("run", "c"), ("state", "crashed")))] == 1
