"""`tunewatch demo-train`: the demo workload of `make up`.

Why: a newcomer should see a real run in Prometheus within a minute without a GPU or a
model download. This trains the tiny Qwen3 model (tunewatch.tinymodel) with the real
transformers Trainer and the PrometheusCallback, paced by a short pause per step so that the
step climbs and the loss falls at a speed a person can watch, and writes a
`checkpoint-<step>/` every `demo.save_steps` steps plus the validation suite, where the
evaluator finds them. When training ends the process stays up (state `completed`) until it
is stopped, so Prometheus keeps seeing the finished run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunewatch.config import Config

log = logging.getLogger("tunewatch.demo")


class PaceCallback(TrainerCallback):
    """Sleeps after each optimizer step: the demo's only concession to human speed."""

    def __init__(self, delay_seconds: float) -> None:
        self.delay_seconds = delay_seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.delay_seconds > 0:
            time.sleep(self.delay_seconds)


class DegradeCallback(TrainerCallback):
    """Publishes a damaged copy of one checkpoint, then pauses: the demo's regression.

    Why: a newcomer should see the whole loop (a bad checkpoint, EvalRegression firing in
    Alertmanager, then resolving when the next good checkpoint is evaluated) within minutes.
    The copy is named checkpoint-<step+1> and written atomically after checkpoint-<step>
    is complete; during the pause the run's state is `paused` (no stall alert), so the
    damaged checkpoint stays the newest long enough for the alert's `for:` to pass.
    """

    def __init__(self, checkpoints: Path, metrics: Any, cfg: Config) -> None:
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.cfg = cfg.demo

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        if not self.cfg.degrade_at_step or step != self.cfg.degrade_at_step:
            return
        from tunewatch import tinymodel

        bad = self.checkpoints / f"checkpoint-{step + 1}"
        if bad.exists():
            return
        tinymodel.degrade_checkpoint(self.checkpoints / f"checkpoint-{step}", bad,
                                     self.cfg.degrade_noise, self.cfg.seed)
        log.warning("demo: wrote %s, a damaged copy of checkpoint-%d (noise %.2g x std); "
                    "pausing %.0f s so that EvalRegression fires", bad.name, step,
                    self.cfg.degrade_noise, self.cfg.degrade_pause_seconds)
        self.metrics.set_state("paused")
        time.sleep(self.cfg.degrade_pause_seconds)
        self.metrics.set_state("training")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default=None, help="default: demo.output_dir")
    parser.add_argument("--max-steps", type=int, default=None, help="default: demo.max_steps")
    parser.add_argument("--save-steps", type=int, default=None, help="default: demo.save_steps")
    parser.add_argument("--step-delay", type=float, default=None,
                        help="seconds to pause after each step (default: demo.step_delay_seconds)")
    parser.add_argument("--web.listen-address", dest="listen", default=None,
                        help="training metrics address (default: training.listen_address)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete earlier demo checkpoints before training")
    parser.add_argument("--exit-when-done", action="store_true",
                        help="exit after training instead of serving the final state")


def run(args: argparse.Namespace, cfg: Config) -> int:
    from exporters.server import ServerStartError
    from exporters.training import PrometheusCallback
    from tunewatch import tinymodel
    from tunewatch.cli import UsageError

    out = Path(args.output_dir or cfg.demo.output_dir)
    max_steps = args.max_steps or cfg.demo.max_steps
    save_steps = args.save_steps or cfg.demo.save_steps
    delay = cfg.demo.step_delay_seconds if args.step_delay is None else args.step_delay
    checkpoints = out / "checkpoints"
    if args.fresh and checkpoints.exists():
        shutil.rmtree(checkpoints)
    spec = tinymodel.TinyModelSpec()
    tinymodel.write_suite(out / "data", spec.suite_size, cfg.demo.seed)
    pairs = tinymodel.training_pairs(spec.train_examples, cfg.demo.seed)
    tokenizer = tinymodel.build_tokenizer(spec, pairs)
    model = tinymodel.build_model(spec, tokenizer, cfg.demo.seed)
    callback = PrometheusCallback(
        listen_address=args.listen or cfg.training.listen_address, run=cfg.run,
        model_name="tiny-qwen3-demo", web_config_file=cfg.training.web_config_file,
        max_concurrent_scrapes=cfg.training.max_concurrent_scrapes,
        scrape_wait_seconds=cfg.training.scrape_wait_seconds,
        crash_grace_seconds=cfg.training.crash_grace_seconds,
        bind_retry_seconds=cfg.training.bind_retry_seconds,
        openmetrics=cfg.training.openmetrics, gzip_level=cfg.training.gzip_level,
        max_logged_metrics=cfg.training.max_logged_metrics,
    )
    try:
        callback.start_server()  # before the model is built: a taken port fails at once
    except ServerStartError as exc:
        raise UsageError(str(exc)) from exc
    log.info("demo: training %d steps, a checkpoint every %d, into %s", max_steps, save_steps,
             checkpoints)
    tinymodel.train(
        model, tokenizer, pairs, checkpoints, max_steps=max_steps, save_steps=save_steps,
        seed=cfg.demo.seed, spec=spec,
        callbacks=[callback, PaceCallback(delay),
                   DegradeCallback(checkpoints, callback.metrics, cfg)],
    )
    log.info("demo: training finished; serving the final state until stopped")
    if args.exit_when_done:
        return 0
    threading.Event().wait()
    return 0
