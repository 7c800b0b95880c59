"""The demo trainer behind `tunewatch demo-train`, the workload of `make up`.

Why: a newcomer should see a real run in Prometheus within a minute without a GPU or a
model download. This trains the tiny Qwen3 model (tunewatch.demo.tinymodel) with the real
transformers Trainer and the PrometheusCallback, paced by a short pause per step so that the
step climbs and the loss falls at a speed a person can watch, and writes a
`checkpoint-<step>/` every `demo.save_steps` steps plus the validation suite, where the
evaluator finds them. Once a checkpoint has been saved, one damaged copy of it is published
(DegradeCallback) so the regression alert is seen firing and resolving.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from exporters.server import ServerStartError
from exporters.training import PrometheusCallback
from tunewatch.core.config import Config
from tunewatch.core.errors import UsageError
from tunewatch.demo import tinymodel

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


@dataclass(frozen=True)
class DemoSettings:
    """What one demo run does: where it writes, how long it trains, where it serves."""

    output_dir: Path
    max_steps: int
    save_steps: int
    step_delay_seconds: float
    listen_address: str
    fresh: bool = False


def training_callback(cfg: Config, listen_address: str) -> PrometheusCallback:
    """The PrometheusCallback as `training:` configures it, its server already listening:
    a taken port fails at once (UsageError), before any training step."""
    t = cfg.training
    callback = PrometheusCallback(
        listen_address=listen_address, run=cfg.run,
        model_name="tiny-qwen3-demo", web_config_file=t.web_config_file,
        max_concurrent_scrapes=t.max_concurrent_scrapes,
        scrape_wait_seconds=t.scrape_wait_seconds,
        crash_grace_seconds=t.crash_grace_seconds,
        bind_retry_seconds=t.bind_retry_seconds,
        openmetrics=t.openmetrics, gzip_level=t.gzip_level,
        max_logged_metrics=t.max_logged_metrics,
    )
    try:
        callback.start_server()
    except ServerStartError as exc:
        raise UsageError(str(exc)) from exc
    return callback


def demo_uses_cpu(device: str) -> bool:
    """demo.device as the Trainer's use_cpu: auto trains on a CUDA GPU when torch sees one,
    so that on a GPU host the demo run holds GPU memory and its MFU and energy per token
    are live (prometheus/rules/efficiency.rules.yml); cuda without one is an error."""
    import torch

    if device == "cpu":
        return True
    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise UsageError("demo.device is cuda, but torch sees no CUDA GPU "
                         "(set demo.device: auto or cpu)")
    return not available


def train_demo(cfg: Config, settings: DemoSettings) -> PrometheusCallback:
    """Write the suite, train the tiny model with the callback, and return the callback,
    whose server keeps serving the finished run's state (`completed`) until the process
    ends."""
    checkpoints = settings.output_dir / "checkpoints"
    if settings.fresh and checkpoints.exists():
        shutil.rmtree(checkpoints)
    spec = tinymodel.TinyModelSpec()
    tinymodel.write_suite(settings.output_dir / "data", spec.suite_size, cfg.demo.seed)
    pairs = tinymodel.training_pairs(spec.train_examples, cfg.demo.seed)
    tokenizer = tinymodel.build_tokenizer(spec, pairs)
    model = tinymodel.build_model(spec, tokenizer, cfg.demo.seed)
    callback = training_callback(cfg, settings.listen_address)
    use_cpu = demo_uses_cpu(cfg.demo.device)
    log.info("demo: training %d steps on the %s, a checkpoint every %d, into %s",
             settings.max_steps, "CPU" if use_cpu else "GPU", settings.save_steps, checkpoints)
    tinymodel.train(
        model, tokenizer, pairs, checkpoints, max_steps=settings.max_steps,
        save_steps=settings.save_steps, seed=cfg.demo.seed, spec=spec,
        callbacks=[callback, PaceCallback(settings.step_delay_seconds),
                   DegradeCallback(checkpoints, callback.metrics, cfg)],
        use_cpu=use_cpu,
    )
    log.info("demo: training finished; serving the final state until stopped")
    return callback
