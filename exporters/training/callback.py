"""PrometheusCallback: training metrics from inside a transformers Trainer.

    trainer.add_callback(PrometheusCallback(listen_address="127.0.0.1:9946", run="r1"))

Why: transformers has no Prometheus integration (`report_to` knows wandb, tensorboard,
mlflow, ...). This callback serves /metrics from the trainer process itself (the main process
only in a distributed run: `state.is_world_process_zero`), publishing TrainingMetrics.

Crashes: while training, an uncaught exception (sys.excepthook, threading.excepthook; the
previous hooks still run) sets the state `crashed` and keeps /metrics up for
`crash_grace_seconds`, so that Prometheus scrapes it before the process exits. A trainer
killed outright says nothing; the recording rule run:tunewatch_training_crashed:max derives
that case from `up == 0` after state `training`.

The hooks are cheap (a lock and a few assignments per step); `make bench` times them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry
from transformers import TrainerCallback

from exporters.server import MetricsServer, ServerOptions
from exporters.training.metrics import TrainingMetrics

log = logging.getLogger("tunewatch.training")


class PrometheusCallback(TrainerCallback):
    """Publish a Trainer's progress on /metrics (DESIGN section 9, port 9946).

    listen_address: HOST:PORT of /metrics. run: the run label (None: $TUNEWATCH_RUN).
    model_name, dataset, regime: tunewatch_training_run_info labels. web_config_file:
    exporter-toolkit web config (TLS, basic auth). crash_grace_seconds: how long /metrics
    stays up after an uncaught exception. metrics: an existing TrainingMetrics to feed.
    """

    def __init__(
        self,
        listen_address: str = "127.0.0.1:9946",
        run: str | None = None,
        *,
        model_name: str = "",
        dataset: str = "",
        regime: str = "",
        web_config_file: str = "",
        max_concurrent_scrapes: int = 8,
        scrape_wait_seconds: float = 1.0,
        crash_grace_seconds: float = 30.0,
        metrics: TrainingMetrics | None = None,
    ) -> None:
        self.listen_address = listen_address
        self.web_config_file = web_config_file
        self.max_concurrent_scrapes = max_concurrent_scrapes
        self.scrape_wait_seconds = scrape_wait_seconds
        self.crash_grace_seconds = crash_grace_seconds
        self.metrics = metrics or TrainingMetrics(run, model_name=model_name, dataset=dataset,
                                                  regime=regime)
        self.registry = CollectorRegistry()
        self.registry.register(self.metrics)
        self.server: MetricsServer | None = None
        self._samples_per_step = 0
        self._count_tokens = False
        self._prev_excepthook: Any = None
        self._prev_thread_hook: Any = None

    # ------------------------------------------------------------------ server, hooks

    def start_server(self) -> MetricsServer:
        """Serve /metrics now (idempotent); normally done at on_train_begin."""
        if self.server is None:
            from exporters.server import start_server

            self.server = start_server(
                self.registry, self.listen_address, self.web_config_file,
                ServerOptions(title="tunewatch training metrics",
                              max_concurrent_scrapes=self.max_concurrent_scrapes,
                              scrape_wait_seconds=self.scrape_wait_seconds),
            )
        return self.server

    def stop(self) -> None:
        """Stop serving and restore the exception hooks (idempotent)."""
        self._uninstall_hooks()
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
        log.error("training crashed (%s); serving /metrics %.0f s more so Prometheus sees it",
                  getattr(exc_type, "__name__", exc_type), self.crash_grace_seconds)

    def _grace(self, exc_type: type[BaseException] | None) -> None:
        if (self.server is not None and self.crash_grace_seconds > 0
                and not (exc_type and issubclass(exc_type, KeyboardInterrupt))):
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

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.start_server()
        self._install_hooks()
        self._count_tokens = getattr(args, "include_num_input_tokens_seen", "no") not in (
            "no", False, None)
        self._samples_per_step = (int(getattr(args, "train_batch_size", 0) or 0)
                                  * int(getattr(args, "gradient_accumulation_steps", 1) or 1)
                                  * int(getattr(args, "world_size", 1) or 1))
        self.metrics.update(max_steps=state.max_steps or None, step=state.global_step,
                            epoch=state.epoch)
        self.metrics.set_state("training")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        step = state.global_step
        self.metrics.record_step(
            step, state.epoch, state.num_input_tokens_seen if self._count_tokens else None,
            step * self._samples_per_step if self._samples_per_step else None,
        )

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
               **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.metrics.update(loss=logs.get("loss"), grad_norm=logs.get("grad_norm"),
                            learning_rate=logs.get("learning_rate"))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None,
                    **kwargs: Any) -> None:
        if state.is_world_process_zero and metrics:
            self.metrics.evaluated(metrics)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.metrics.checkpoint_saved(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.metrics.update(step=state.global_step, epoch=state.epoch)
        if self.metrics.state != "crashed":
            self.metrics.set_state("completed")
        self._uninstall_hooks()
