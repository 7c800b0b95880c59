"""PrometheusCallback: training metrics from inside a transformers Trainer.

    trainer.add_callback(PrometheusCallback(listen_address="127.0.0.1:9946", run="r1"))

Why: transformers has no Prometheus integration (`report_to` knows wandb, tensorboard,
mlflow, ...). This callback serves /metrics from the trainer process itself (the main process
only in a distributed run: `state.is_world_process_zero`), publishing TrainingMetrics.

Monitoring never harms the run it watches. A port that cannot be bound at on_train_begin
(taken, not allowed) is a warning, counted in tunewatch_training_exporter_bind_failures_total,
and retried every `bind_retry_seconds` in a daemon thread while training goes on; the metrics
are kept meanwhile and appear once the port frees. Every Trainer hook catches its own
exceptions: logged once per kind (hook and exception type), counted in
tunewatch_training_callback_errors_total{reason=<hook>}, never raised into the Trainer.

Crashes: while training, an uncaught exception (sys.excepthook, threading.excepthook; the
previous hooks still run) sets the state `crashed` and keeps /metrics up for
`crash_grace_seconds`, so that Prometheus scrapes it before the process exits. A trainer
killed outright says nothing; the recording rule run:tunewatch_training_crashed:max derives
that case from `up == 0` after state `training`.

The hooks are cheap (a lock and a few assignments per step); `make bench` times them.
"""

from __future__ import annotations

import errno
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from transformers import TrainerCallback

from exporters.server import MetricsServer, ServerOptions, ServerStartError, parse_listen_address
from exporters.training.metrics import (
    DEFAULT_MAX_LOGGED_METRICS,
    TrainingMetrics,
    count_parameters,
    counter_family,
)
from exporters.webconfig import WebConfigError
from tunewatch.core.config import TrainingConfig

log = logging.getLogger("tunewatch.training")

# The Trainer events the callback implements: the `reason` of callback_errors_total.
HOOKS = ("on_train_begin", "on_step_end", "on_log", "on_evaluate", "on_save", "on_train_end")
# Why /metrics could not be served: the `reason` of exporter_bind_failures_total.
BIND_REASONS = ("address_in_use", "permission_denied", "address_not_available", "web_config",
                "other")
_ERRNO_REASONS = {errno.EADDRINUSE: "address_in_use", errno.EACCES: "permission_denied",
                  errno.EPERM: "permission_denied", errno.EADDRNOTAVAIL: "address_not_available"}


def bind_failure_reason(exc: Exception) -> str:
    """The bounded reason of a failed start, from the exception behind it."""
    cause = exc.__cause__
    if isinstance(cause, WebConfigError):
        return "web_config"
    if isinstance(cause, OSError) and cause.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[cause.errno]
    return "other"


class CallbackHealth:
    """The callback's own failures, so that a monitoring problem is itself visible:

        tunewatch_training_callback_errors_total{reason="on_log",run="r1"} 0
        tunewatch_training_exporter_bind_failures_total{reason="address_in_use",run="r1"} 3

    Every reason is exposed from the start (0), so increase() sees the first one.
    """

    def __init__(self, metrics: TrainingMetrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self._hook_errors = dict.fromkeys(HOOKS, 0)
        self._bind_failures = dict.fromkeys(BIND_REASONS, 0)
        self._kinds: set[tuple[str, str]] = set()

    def hook_failed(self, hook: str, exc: Exception) -> bool:
        """Count a hook's exception; True the first time this hook fails with this type."""
        kind = (hook, type(exc).__qualname__)
        with self._lock:
            self._hook_errors[hook] += 1
            first = kind not in self._kinds
            self._kinds.add(kind)
        return first

    def bind_failed(self, reason: str) -> None:
        with self._lock:
            self._bind_failures[reason] += 1

    def collect(self) -> Iterator[Metric]:
        run = self.metrics.run
        with self._lock:
            hook_errors, bind_failures = dict(self._hook_errors), dict(self._bind_failures)
        yield counter_family(
            "tunewatch_training_callback_errors",
            "Exceptions caught in the callback's Trainer hooks (never raised into the "
            "Trainer), by hook.", ["run", "reason"],
            [([run, hook], count) for hook, count in hook_errors.items()])
        yield counter_family(
            "tunewatch_training_exporter_bind_failures",
            "Attempts to serve /metrics that failed (the callback retries while training "
            "goes on), by reason.", ["run", "reason"],
            [([run, reason], count) for reason, count in bind_failures.items()])

    def describe(self) -> list[Metric]:
        return []


def _guarded(hook: Callable[..., None]) -> Callable[..., None]:
    """Run a Trainer hook so that no exception of ours ever reaches the Trainer."""
    name = hook.__name__

    @functools.wraps(hook)
    def guarded(self: PrometheusCallback, *args: Any, **kwargs: Any) -> None:
        try:
            hook(self, *args, **kwargs)
        except Exception as exc:  # monitoring must not stop training: count and go on
            self._hook_failed(name, exc)

    return guarded


class PrometheusCallback(TrainerCallback):
    """Publish a Trainer's progress on /metrics (DESIGN section 9, port 9946).

    listen_address: HOST:PORT of /metrics. run: the run label (None: $TUNEWATCH_RUN).
    model_name, dataset, regime: tunewatch_training_run_info labels. web_config_file:
    exporter-toolkit web config (TLS, basic auth). crash_grace_seconds: how long /metrics
    stays up after an uncaught exception. bind_retry_seconds: how often a port that could
    not be bound is tried again. openmetrics, gzip_level: the exposition (docs/exporter.md).
    max_logged_metrics: distinct names of the `metric` label
    (logged values; evaluation values). metrics: an existing TrainingMetrics to feed.
    A malformed listen_address is a ServerStartError here, before training starts.
    """

    def __init__(
        self,
        listen_address: str = TrainingConfig.listen_address,
        run: str | None = None,
        *,
        model_name: str = "",
        dataset: str = "",
        regime: str = "",
        web_config_file: str = "",
        max_concurrent_scrapes: int = TrainingConfig.max_concurrent_scrapes,
        scrape_wait_seconds: float = TrainingConfig.scrape_wait_seconds,
        crash_grace_seconds: float = TrainingConfig.crash_grace_seconds,
        bind_retry_seconds: float = TrainingConfig.bind_retry_seconds,
        openmetrics: bool = TrainingConfig.openmetrics,
        gzip_level: int = TrainingConfig.gzip_level,
        max_logged_metrics: int = DEFAULT_MAX_LOGGED_METRICS,
        metrics: TrainingMetrics | None = None,
    ) -> None:
        parse_listen_address(listen_address)
        if bind_retry_seconds <= 0:
            raise ValueError(f"bind_retry_seconds {bind_retry_seconds}: must be > 0")
        self.listen_address = listen_address
        self.web_config_file = web_config_file
        self.max_concurrent_scrapes = max_concurrent_scrapes
        self.scrape_wait_seconds = scrape_wait_seconds
        self.crash_grace_seconds = crash_grace_seconds
        self.bind_retry_seconds = bind_retry_seconds
        self.openmetrics = openmetrics
        self.gzip_level = gzip_level
        self.metrics = metrics or TrainingMetrics(run, model_name=model_name, dataset=dataset,
                                                  regime=regime,
                                                  max_logged_metrics=max_logged_metrics)
        self.health = CallbackHealth(self.metrics)
        self.registry = CollectorRegistry()
        self.registry.register(self.metrics)
        self.registry.register(self.health)
        self.server: MetricsServer | None = None
        self._server_lock = threading.Lock()
        self._binder: threading.Thread | None = None
        self._stopping = threading.Event()
        self._samples_per_step = 0
        self._count_tokens = False
        self._prev_excepthook: Any = None
        self._prev_thread_hook: Any = None

    # ------------------------------------------------------------------ server, hooks

    def start_server(self) -> MetricsServer:
        """Serve /metrics now (idempotent); raises ServerStartError naming the address.

        For a caller that wants a taken port to fail at once (`tunewatch demo-train`);
        on_train_begin never raises: it retries in the background instead.
        """
        with self._server_lock:
            if self.server is None:
                from exporters.server import start_server

                self.server = start_server(
                    self.registry, self.listen_address, self.web_config_file,
                    ServerOptions(title="tunewatch training metrics",
                                  max_concurrent_scrapes=self.max_concurrent_scrapes,
                                  scrape_wait_seconds=self.scrape_wait_seconds,
                                  openmetrics=self.openmetrics, gzip_level=self.gzip_level),
                )
            return self.server

    def serve_in_background(self) -> None:
        """Serve /metrics now if the port can be bound, else keep trying every
        `bind_retry_seconds` in a daemon thread. Never raises: training goes on either way."""
        if self.server is not None or (self._binder is not None and self._binder.is_alive()):
            return
        try:
            self.start_server()
            return
        except Exception as exc:  # whatever the cause, training goes on; so does trying
            self._bind_failed(exc, first=True)
        self._stopping.clear()
        self._binder = threading.Thread(target=self._bind_loop, name="tunewatch-metrics-bind",
                                        daemon=True)
        self._binder.start()

    def _bind_loop(self) -> None:
        """The retry thread. It catches everything: an exception escaping it would reach
        threading.excepthook, which this callback reads as the run crashing."""
        attempts = 1
        while not self._stopping.wait(self.bind_retry_seconds):
            try:
                self.start_server()
            except Exception as exc:
                attempts += 1
                self._bind_failed(exc, first=False)
                continue
            log.info("training metrics served on %s after %d failed attempt(s) to bind",
                     self.listen_address, attempts)
            return

    def _bind_failed(self, exc: Exception, *, first: bool) -> None:
        self.health.bind_failed(bind_failure_reason(exc))
        # A ServerStartError names the address and the cause; anything else gets both here.
        what = (str(exc) if isinstance(exc, ServerStartError) else
                f"cannot serve on {self.listen_address}: {type(exc).__name__}: {exc}")
        if first:
            log.warning("%s; training goes on, metrics are kept and the address is tried "
                        "again every %g s", what, self.bind_retry_seconds)
        else:
            log.debug("%s; trying again in %g s", what, self.bind_retry_seconds)

    def _hook_failed(self, hook: str, exc: Exception) -> None:
        if self.health.hook_failed(hook, exc):
            log.warning("PrometheusCallback.%s failed (%s: %s); training goes on. Further "
                        "%s errors in this hook are only counted "
                        "(tunewatch_training_callback_errors_total)", hook,
                        type(exc).__name__, exc, type(exc).__name__, exc_info=exc)

    def stop(self) -> None:
        """Stop serving (and retrying), restore the exception hooks (idempotent)."""
        self._uninstall_hooks()
        self._stopping.set()
        if self._binder is not None:
            self._binder.join()
            self._binder = None
        with self._server_lock:
            if self.server is not None:
                self.server.stop()
                self.server = None

    def _install_hooks(self) -> None:
        if self._prev_excepthook is not None:
            return
        self._prev_excepthook = sys.excepthook
        self._prev_thread_hook = threading.excepthook
        sys.excepthook = self._excepthook
        threading.excepthook = self._thread_excepthook

    def _uninstall_hooks(self) -> None:
        if self._prev_excepthook is None:
            return
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._prev_excepthook
        if threading.excepthook == self._thread_excepthook:
            threading.excepthook = self._prev_thread_hook
        self._prev_excepthook = self._prev_thread_hook = None

    def _crashed(self, exc_type: type[BaseException] | None) -> None:
        self.metrics.set_state("crashed")
        name = getattr(exc_type, "__name__", exc_type)
        if self._grace_applies(exc_type):
            log.error("training crashed (%s); serving /metrics %.0f s more so Prometheus "
                      "sees it", name, self.crash_grace_seconds)
        else:
            log.error("training crashed (%s); marked crashed, exiting now", name)

    def _grace_applies(self, exc_type: type[BaseException] | None) -> bool:
        """A crash keeps /metrics up a while, except on Ctrl-C: a person is waiting."""
        return (self.server is not None and self.crash_grace_seconds > 0
                and not (exc_type and issubclass(exc_type, KeyboardInterrupt)))

    def _grace(self, exc_type: type[BaseException] | None) -> None:
        if self._grace_applies(exc_type):
            time.sleep(self.crash_grace_seconds)

    def _excepthook(self, exc_type: Any, exc: Any, tb: Any) -> None:
        prev = self._prev_excepthook or sys.__excepthook__
        self._crashed(exc_type)
        prev(exc_type, exc, tb)
        self._grace(exc_type)

    def _thread_excepthook(self, hook_args: Any) -> None:
        prev = self._prev_thread_hook or threading.__excepthook__
        if hook_args.exc_type is not SystemExit:
            self._crashed(hook_args.exc_type)
        prev(hook_args)

    # ------------------------------------------------------------------ Trainer events

    @_guarded
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self._install_hooks()
        self._count_tokens = getattr(args, "include_num_input_tokens_seen", "no") not in (
            "no", False, None)
        # The effective batch: per-process batch (the Trainer's own, which
        # auto_find_batch_size may have lowered) x gradient accumulation x processes.
        batch = getattr(state, "train_batch_size", None) or getattr(args, "train_batch_size", 0)
        self._samples_per_step = (int(batch or 0)
                                  * int(getattr(args, "gradient_accumulation_steps", 1) or 1)
                                  * int(getattr(args, "world_size", 1) or 1))
        self.metrics.update(max_steps=state.max_steps or None, step=state.global_step,
                            epoch=state.epoch, batch_size=self._samples_per_step or None)
        self._publish_model_size(kwargs.get("model"))
        self.metrics.set_state("training")
        self.serve_in_background()

    def _publish_model_size(self, model: Any) -> None:
        """The parameter counts of the model the Trainer passes, once per train().

        Why its own guard: a model whose parameters cannot be read must cost only the two
        gauges, not the state and the server set up after it; the failure is logged once and
        counted under on_train_begin like any hook error. A model with no parameters in this
        process (one we cannot see through) publishes nothing rather than a 0 the MFU rule
        would take as the size.
        """
        if model is None:
            return
        try:
            total, trainable = count_parameters(model)
        except Exception as exc:  # monitoring must not stop training: count and go on
            self._hook_failed("on_train_begin", exc)
            return
        if total == 0:
            log.warning("the model has no parameters in this process; "
                        "tunewatch_training_model_parameters is not published")
            return
        self.metrics.set_model_size(total, trainable)

    @_guarded
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        step = state.global_step
        self.metrics.record_step(
            step, state.epoch, state.num_input_tokens_seen if self._count_tokens else None,
            step * self._samples_per_step if self._samples_per_step else None,
        )

    @_guarded
    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
               **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            self.metrics.logged(logs)

    @_guarded
    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None,
                    **kwargs: Any) -> None:
        if state.is_world_process_zero and metrics:
            self.metrics.evaluated(metrics)

    @_guarded
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.metrics.checkpoint_saved(state.global_step)

    @_guarded
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self._uninstall_hooks()
        self.metrics.update(step=state.global_step, epoch=state.epoch)
        if self.metrics.state != "crashed":
            self.metrics.set_state("completed")
