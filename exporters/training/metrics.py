"""TrainingMetrics: the training metrics of one run, framework-free, collected on scrape.

Why: the transformers callback, a hand-written training loop and the status-file sidecar
all publish the same series (DESIGN section 9), so they share this one object. It keeps the
latest facts under a lock; `collect()` turns them into metric families on each scrape, so
no `_created` samples appear and a value that was never measured is absent, not 0:

    tunewatch_training_step{run="r1"} 120
    tunewatch_training_max_steps{run="r1"} 600
    tunewatch_training_loss{run="r1"} 1.93
    tunewatch_training_tokens_total{run="r1"} 48211
    tunewatch_training_model_parameters{run="r1"} 4.9e+08
    tunewatch_training_logged_metric{metric="rewards/accuracy",run="r1"} 0.61
    tunewatch_training_state{run="r1",state="training"} 1
    tunewatch_training_run_info{dataset="",model="tiny-qwen3-demo",regime="",run="r1"} 1

Every series carries the `run` label (given, else `$TUNEWATCH_RUN`, else `default` as in
tunewatch.yml). Cumulative quantities (`tokens`, `samples`) are totals so far, exposed as counters;
a total that goes down (a restarted run) is a counter reset, which rate() handles.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric

from exporters.labels import bounded_label_value
from tunewatch.core.config import TrainingConfig

log = logging.getLogger("tunewatch.training")

# The states of `tunewatch_training_state`; `stale` and `unknown` only come from the sidecar
# (no status update for too long, or no status file), but every process publishes the whole
# set so that dashboards and rules see the same series everywhere.
STATES = ("idle", "training", "paused", "completed", "crashed", "stale", "unknown")
TRAINER_STATES = ("idle", "training", "paused", "completed", "crashed")

# The `metric` label is bounded: this many distinct names per family at most (the default
# of `training.max_logged_metrics`); values under further names are counted as dropped.
DEFAULT_MAX_LOGGED_METRICS = TrainingConfig.max_logged_metrics
# Keys of the Trainer's evaluation metrics that describe the evaluation or the run, not the
# model (num_input_tokens_seen: added to every evaluation by include_num_input_tokens_seen).
EVAL_SKIPPED = ("runtime", "samples_per_second", "steps_per_second", "epoch", "step",
                "num_input_tokens_seen")

GAUGES = {
    "step": ("tunewatch_training_step", "Optimizer steps completed (the Trainer's global_step)."),
    "max_steps": ("tunewatch_training_max_steps", "Optimizer steps the run will take in all."),
    "epoch": ("tunewatch_training_epoch", "Epochs completed, fractional."),
    "loss": ("tunewatch_training_loss", "Training loss last logged (finite values only)."),
    "grad_norm": ("tunewatch_training_grad_norm",
                  "Gradient norm last logged, before clipping (finite values only)."),
    "learning_rate": ("tunewatch_training_learning_rate", "Learning rate last logged."),
    "model_parameters": ("tunewatch_training_model_parameters",
                         "Parameters of the model being trained, all of them."),
    "model_trainable_parameters": ("tunewatch_training_model_trainable_parameters",
                                   "Parameters of the model being trained that the optimizer "
                                   "updates (requires_grad)."),
    "batch_size": ("tunewatch_training_batch_size",
                   "Training samples per optimizer step: per-process batch x gradient "
                   "accumulation x processes."),
}


def _number(value: Any) -> float | None:
    """The value as a float (NaN and infinities included) if it is a number, else None.

    Numbers are what float() accepts, except booleans and text: Python and numpy numbers,
    one-element tensors. Anything float() refuses with TypeError or ValueError is not a
    number; any other exception (a tensor that cannot be read) is the caller's problem.
    """
    if value is None or isinstance(value, bool | str | bytes):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finite(value: Any) -> float | None:
    """The value as a float if it is a finite number, else None."""
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None


def _count(name: str, value: Any) -> float:
    """A parameter count as a float: a finite, whole, non-negative number, else ValueError."""
    number = _finite(value)
    if number is None or number < 0 or not number.is_integer():
        raise ValueError(f"{name} {value!r}: expected a whole number >= 0")
    return number


def count_parameters(model: Any) -> tuple[int, int]:
    """(total, trainable) parameters of a torch module, without importing torch.

    Why model.parameters(): it yields each parameter once, so tied weights (a shared
    embedding and output layer) count once, as transformers' own count does. A parameter
    that DeepSpeed ZeRO-3 has partitioned away holds no elements here; its `ds_numel` is the
    full size (transformers' get_model_param_count reads it the same way). Trainable: the
    parameters with requires_grad, what the optimizer updates (LoRA adapters, unfrozen
    layers).
    """
    total = trainable = 0
    for parameter in model.parameters():
        size = int(getattr(parameter, "ds_numel", None) or parameter.numel())
        total += size
        if parameter.requires_grad:
            trainable += size
    return total, trainable


def counter_family(name: str, doc: str, labels: list[str],
                   rows: list[tuple[list[str], float]]) -> CounterMetricFamily:
    """A counter family from (label values, count) rows: the shape every small counter of
    the training metrics and the callback's own health takes."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, count in rows:
        family.add_metric(values, count)
    return family


class TrainingMetrics:
    """The training metrics of one run; register it in a CollectorRegistry.

    For a hand-written loop:

        metrics = TrainingMetrics(run="r1", model_name="my-model")
        registry = CollectorRegistry(); registry.register(metrics)
        metrics.set_state("training")
        metrics.set_model_size(*count_parameters(model))
        metrics.update(step=step, max_steps=1000, loss=loss.item(), tokens=tokens_so_far)
        metrics.checkpoint_saved(step)
        metrics.set_state("completed")
    """

    def __init__(
        self,
        run: str | None = None,
        *,
        model_name: str = "",
        dataset: str = "",
        regime: str = "",
        max_logged_metrics: int = DEFAULT_MAX_LOGGED_METRICS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_logged_metrics < 0:
            raise ValueError(f"max_logged_metrics {max_logged_metrics}: must be >= 0")
        self.max_logged_metrics = max_logged_metrics
        self.run = bounded_label_value(
            (os.environ.get("TUNEWATCH_RUN") or "default") if run is None else run)
        self.info = {"model": bounded_label_value(model_name),
                     "dataset": bounded_label_value(dataset),
                     "regime": bounded_label_value(regime)}
        self.clock = clock
        self._lock = threading.Lock()
        self._gauges: dict[str, float] = {}
        self._tokens: float | None = None
        self._samples: float | None = None
        self._state = "idle"
        self._last_step_ts: float | None = None
        self._nonfinite = 0
        self._eval_loss: float | None = None
        self._eval: dict[str, float] = {}
        self._logged: dict[str, float] = {}
        self._logged_names: set[str] = set()
        self._logged_nonfinite: dict[str, int] = {}
        self._dropped = 0
        self._warned_cap: set[str] = set()
        self._checkpoints = 0
        self._checkpoint_step: float | None = None
        self._checkpoint_ts: float | None = None

    # ------------------------------------------------------------------ updates

    @property
    def state(self) -> str:
        return self._state

    def set_state(self, state: str) -> None:
        """One of STATES; anything else is a ValueError."""
        if state not in STATES:
            raise ValueError(f"training state {state!r}: expected one of {', '.join(STATES)}")
        with self._lock:
            self._state = state

    def set_info(self, **info: str) -> None:
        """Change run_info labels (model, dataset, regime) or the run itself (run=...)."""
        with self._lock:
            for key, value in info.items():
                if key == "run":
                    self.run = bounded_label_value(value)
                elif key in self.info:
                    self.info[key] = bounded_label_value(value)
                else:
                    raise ValueError(f"unknown run_info field {key!r}")

    def update(
        self,
        *,
        step: float | None = None,
        max_steps: float | None = None,
        epoch: float | None = None,
        loss: float | None = None,
        grad_norm: float | None = None,
        learning_rate: float | None = None,
        tokens: float | None = None,
        samples: float | None = None,
        timestamp: float | None = None,
        batch_size: float | None = None,
    ) -> None:
        """Record the facts given (None: unchanged).

        step: optimizer steps done; a new step also sets the last-step timestamp (now, or
        `timestamp`). tokens/samples: totals seen so far. batch_size: samples per optimizer
        step (what seed 001 plots throughput against GPU memory by). A loss or grad norm
        that is NaN or infinite is not published; a non-finite loss increments
        tunewatch_training_nonfinite_loss_total instead.
        """
        with self._lock:
            if step is not None:
                new = _finite(step)
                if new is not None:
                    if new != self._gauges.get("step"):
                        self._last_step_ts = self.clock() if timestamp is None else timestamp
                    self._gauges["step"] = new
            if loss is not None:
                if _finite(loss) is None:
                    self._nonfinite += 1
                else:
                    self._gauges["loss"] = float(loss)
            for key, value in (("max_steps", max_steps), ("epoch", epoch),
                               ("grad_norm", grad_norm), ("learning_rate", learning_rate),
                               ("batch_size", batch_size)):
                number = _finite(value)
                if number is not None:
                    self._gauges[key] = number
            if (number := _finite(tokens)) is not None:
                self._tokens = number
            if (number := _finite(samples)) is not None:
                self._samples = number

    def record_step(self, step: int, epoch: float | None = None, tokens: float | None = None,
                    samples: float | None = None) -> None:
        """The per-step fast path for trusted numbers (a Trainer's state): no validation."""
        with self._lock:
            gauges = self._gauges
            if gauges.get("step") != step:
                self._last_step_ts = self.clock()
                gauges["step"] = step
            if epoch is not None:
                gauges["epoch"] = epoch
            if tokens is not None:
                self._tokens = tokens
            if samples is not None:
                self._samples = samples

    def set_model_size(self, parameters: float | None = None,
                       trainable_parameters: float | None = None) -> None:
        """Record the model's parameter counts (None: unchanged); see count_parameters().

        Why here and not in update(): a count is a whole number >= 0 and anything else is a
        caller's mistake (ValueError), not a measurement to skip. Both gauges stay absent
        until set: the MFU rule must not read an unknown size as 0.
        """
        counts = {key: _count(key, value) for key, value in
                  (("model_parameters", parameters),
                   ("model_trainable_parameters", trainable_parameters)) if value is not None}
        with self._lock:
            self._gauges.update(counts)

    def logged(self, logs: Mapping[str, Any]) -> None:
        """Record one Trainer log (on_log): every numeric key, and the named families.

        Why every key: a Trainer logs what its task has (TRL's rewards and KL, token
        accuracy, a user's own values), not only the loss. Each numeric value becomes
        tunewatch_training_logged_metric{metric=<key>} (the first `max_logged_metrics`
        distinct keys; values under further keys are counted as dropped). A NaN or infinite
        value is not published (the last finite one stays) but counted per key. `loss`,
        `grad_norm` and `learning_rate` also set their own families, as update() does.
        Non-numeric values (text, lists, booleans) are ignored.
        """
        numbers: dict[str, float] = {}
        for key, value in logs.items():
            number = _number(value)
            if number is not None:
                numbers[bounded_label_value(key)] = number
        self.update(loss=numbers.get("loss"), grad_norm=numbers.get("grad_norm"),
                    learning_rate=numbers.get("learning_rate"))
        with self._lock:
            for name, number in numbers.items():
                if not self._admit(self._logged_names, name, "logged"):
                    continue
                self._logged_names.add(name)
                if math.isfinite(number):
                    self._logged[name] = number
                else:
                    self._logged_nonfinite[name] = self._logged_nonfinite.get(name, 0) + 1

    def _admit(self, names: Collection[str], name: str, family: str) -> bool:
        """Whether `name` may be a `metric` label value of `family` (caller holds the lock).

        A new name is admitted while the family has fewer than `max_logged_metrics` names;
        otherwise the value is counted as dropped, with one warning per family.
        """
        if name in names:
            return True
        if len(names) < self.max_logged_metrics:
            return True
        self._dropped += 1
        if family not in self._warned_cap:
            self._warned_cap.add(family)
            log.warning("%s metric %r not published: more than %d distinct names "
                        "(training.max_logged_metrics); further ones are counted in "
                        "tunewatch_training_logged_metrics_dropped_total", family, name,
                        self.max_logged_metrics)
        return False

    def evaluated(self, metrics: Mapping[str, Any]) -> None:
        """Record an evaluation: `eval_loss` and other numeric `eval_*` metrics.

        Keys may carry the Trainer's `eval_` prefix or not. Runtime and throughput keys are
        skipped (they describe the evaluation, not the model); non-finite values are dropped
        (the Trainer logs them too, so on_log counts them). At most `max_logged_metrics`
        names; values under further names are counted as dropped.
        """
        with self._lock:
            for key, value in metrics.items():
                name = key[5:] if key.startswith("eval_") else key
                number = _finite(value)
                if number is None or name in EVAL_SKIPPED:
                    continue
                if name == "loss":
                    self._eval_loss = number
                elif self._admit(self._eval, label := bounded_label_value(name), "eval"):
                    self._eval[label] = number

    def checkpoint_saved(self, step: float, timestamp: float | None = None) -> None:
        """A checkpoint was written at `step` (now, or at `timestamp`)."""
        with self._lock:
            self._checkpoints += 1
            self._checkpoint_step = float(step)
            self._checkpoint_ts = self.clock() if timestamp is None else timestamp

    def restore_checkpoint_facts(self, step: float | None, timestamp: float | None) -> None:
        """Set the last checkpoint step/time without counting a save (the sidecar)."""
        with self._lock:
            if step is not None:
                self._checkpoint_step = float(step)
            if timestamp is not None:
                self._checkpoint_ts = float(timestamp)

    # ------------------------------------------------------------------ exposition

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            run = self.run
            gauges = dict(self._gauges)
            tokens, samples, state = self._tokens, self._samples, self._state
            last_step_ts, nonfinite = self._last_step_ts, self._nonfinite
            eval_loss, evals = self._eval_loss, dict(self._eval)
            logged, logged_nonfinite = dict(self._logged), dict(self._logged_nonfinite)
            dropped = self._dropped
            checkpoints, ckpt_step, ckpt_ts = (self._checkpoints, self._checkpoint_step,
                                               self._checkpoint_ts)
            info = dict(self.info)
        labels = ["run"]

        def one(kind: type[Metric], name: str, text: str, value: float | None) -> Metric:
            """A family of this run's single series; no sample when never measured."""
            family = kind(name, text, labels=labels)  # type: ignore[call-arg]
            if value is not None:
                family.add_metric([run], value)  # type: ignore[attr-defined]
            return family

        for key, (name, text) in GAUGES.items():
            yield one(GaugeMetricFamily, name, text, gauges.get(key))
        yield one(CounterMetricFamily, "tunewatch_training_tokens", "Input tokens seen so far "
                  "(absent when the trainer does not count them).", tokens)
        yield one(CounterMetricFamily, "tunewatch_training_samples",
                  "Training samples seen so far.", samples)
        # A state set (OpenMetrics), written as a gauge with a `state` label as DESIGN names
        # it; client_python's StateSetMetricFamily would name the label after the metric.
        states = GaugeMetricFamily("tunewatch_training_state",
                                   "Training state: exactly one of the states is 1.",
                                   labels=["run", "state"])
        for name in STATES:
            states.add_metric([run, name], 1.0 if name == state else 0.0)
        yield states
        yield one(GaugeMetricFamily, "tunewatch_training_last_step_timestamp_seconds",
                  "Unix time the step last advanced.", last_step_ts)
        yield one(CounterMetricFamily, "tunewatch_training_nonfinite_loss",
                  "Logged losses that were NaN or infinite (not published as the loss).",
                  nonfinite)
        yield one(GaugeMetricFamily, "tunewatch_training_eval_loss",
                  "Loss of the last evaluation during training.", eval_loss)
        family = GaugeMetricFamily("tunewatch_training_eval_metric",
                                   "Other numeric metrics of the last evaluation during "
                                   "training, by name without the eval_ prefix.",
                                   labels=["run", "metric"])
        for name, value in sorted(evals.items()):
            family.add_metric([run, name], value)
        yield family
        yield from self._collect_logged(run, logged, logged_nonfinite, dropped)
        yield one(CounterMetricFamily, "tunewatch_training_checkpoints_saved",
                  "Checkpoints saved by this process.", checkpoints)
        yield one(GaugeMetricFamily, "tunewatch_training_last_checkpoint_step",
                  "Step of the last checkpoint saved.", ckpt_step)
        yield one(GaugeMetricFamily, "tunewatch_training_last_checkpoint_timestamp_seconds",
                  "Unix time the last checkpoint was saved.", ckpt_ts)
        run_info = InfoMetricFamily("tunewatch_training_run", "The run: model, data set, "
                                    "regime.", labels=labels)
        run_info.add_metric([run], info)
        yield run_info

    @staticmethod
    def _collect_logged(run: str, logged: dict[str, float], nonfinite: dict[str, int],
                        dropped: int) -> Iterator[Metric]:
        family = GaugeMetricFamily("tunewatch_training_logged_metric",
                                   "Numeric values the trainer logged, by key, as last logged "
                                   "(finite values only).", labels=["run", "metric"])
        for name, value in sorted(logged.items()):
            family.add_metric([run, name], value)
        yield family
        yield counter_family("tunewatch_training_logged_metric_nonfinite",
                             "Logged values that were NaN or infinite (not published), by key.",
                             ["run", "metric"],
                             [([run, name], count) for name, count in sorted(nonfinite.items())])
        yield counter_family("tunewatch_training_logged_metrics_dropped",
                             "Logged or evaluation values not published: their name came after "
                             "the first max_logged_metrics distinct ones.", ["run"],
                             [([run], dropped)])

    def describe(self) -> list[Metric]:
        return []
