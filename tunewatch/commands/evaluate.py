"""`tunewatch evaluate`: evaluate every new checkpoint once and publish the figures (:9947).

Why a command module: the daemon (evaluators/daemon/) is a library; this parses the flags,
chooses the evaluator (evaluators/selection.py: local or the inference server, flags over
the configuration), builds the daemon, the predictions recorder and the web server, and
runs the loop until a stop signal (or, with --once, until the checkpoints there now are
done). Exit status: 0 done (or stopped), 1 the state file is unreadable, the server cannot
start, or with --once an evaluation failed, 2 a usage error.

    tunewatch evaluate --checkpoints runs/x/checkpoints --data data/validation
    tunewatch evaluate --once ...     # evaluate what is complete now, then exit
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from evaluators.daemon import Daemon
from evaluators.predictions.recorder import Recorder
from evaluators.selection import (
    EvaluatorSelection,
    Overrides,
    add_backend_arguments,
    backend_config_flags,
    evaluator_for,
)
from evaluators.state import StateError
from exporters.server import (
    ServerStartError,
    add_web_arguments,
    freeze_startup_objects,
    start_for_section,
    wait_for_stop_signal,
)
from tunewatch.core.config import Config

log = logging.getLogger("tunewatch.evaluate")
# The keys --backend and --remote-url set, read with the configuration (tunewatch/cli.py).
config_flags = backend_config_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", default=None,
                        help="directory where checkpoint-<step>/ appear "
                             "(default: evaluator.checkpoints)")
    parser.add_argument("--data", default=None,
                        help="validation suite directory (default: evaluator.data)")
    parser.add_argument("--state-dir", dest="state_dir", default=None,
                        help="where the state and hard examples live (default: "
                             "evaluator.state_dir)")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate a quick subset of N examples, spread over difficulties")
    parser.add_argument("--device", default=None, help="override evaluator.device")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override evaluator.batch_size")
    parser.add_argument("--once", action="store_true",
                        help="evaluate the complete checkpoints there now (one try each), "
                             "then exit: 0 if all succeeded, 1 otherwise")
    add_backend_arguments(parser)
    add_web_arguments(parser, "evaluator")


def _daemon(args: argparse.Namespace, cfg: Config, chosen: EvaluatorSelection,
            recorder: Recorder | None) -> Daemon | None:
    """The daemon, its state read; None (logged) when the state file cannot be used."""
    ev = chosen.config
    try:
        return Daemon(ev, checkpoints=Path(ev.checkpoints), data=Path(ev.data),
                      state_dir=Path(ev.state_dir), run_name=cfg.run, limit=args.limit,
                      once=args.once, recorder=recorder, evaluate=chosen.evaluate,
                      remote_stats=chosen.remote_stats, deployer=chosen.deployer)
    except StateError as exc:
        log.error("%s (move it away to start afresh)", exc)
        return None


def _loop(daemon: Daemon, once: bool) -> int:
    """Run the loop: with `once` here until done, otherwise in a thread until a signal."""
    stop = threading.Event()
    if once:
        daemon.run_forever(stop)
        if daemon.suite is None and daemon.failures["data"]:
            log.error("nothing evaluated: checkpoints wait for a suite that cannot be loaded "
                      "from %s (%s)", daemon.data, daemon.suite_error)
        failed = sum(daemon.failures.values())
        return 1 if failed else 0
    worker = threading.Thread(target=daemon.run_forever, args=(stop,), name="evaluator",
                              daemon=True)
    worker.start()
    wait_for_stop_signal()
    stop.set()
    daemon.wake.set()
    return 0


def run(args: argparse.Namespace, cfg: Config) -> int:
    chosen = evaluator_for(cfg, Overrides.from_flags(args), deploy=True)
    ev = chosen.config
    recorder = (Recorder.from_config(cfg.predictions, state_dir=ev.state_dir, run=cfg.run)
                if cfg.predictions.enabled else None)
    daemon = _daemon(args, cfg, chosen, recorder)
    if daemon is None:
        if recorder is not None:
            recorder.close()
        return 1
    if not daemon.checkpoints.is_dir():
        if args.once:  # nothing will come: a wrong path (relative to the current directory)
            log.error("checkpoint directory %s does not exist (relative paths are taken "
                      "from the current directory, %s)", daemon.checkpoints, Path.cwd())
            if recorder is not None:
                recorder.close()
            return 1
        log.warning("checkpoint directory %s does not exist (yet); waiting for it",
                    daemon.checkpoints)
    registry = CollectorRegistry()
    registry.register(daemon)
    try:
        server = start_for_section(registry, ev, "tunewatch evaluator", ready=daemon.ready)
    except ServerStartError as exc:
        log.error("%s", exc)
        return 1
    if chosen.deployer is not None:
        chosen.deployer.note_served()
    # torch and transformers leave a few hundred thousand objects from their imports; a
    # full collection walking them would stall both the loop and a scrape of /metrics.
    freeze_startup_objects()
    try:
        return _loop(daemon, args.once)
    finally:
        server.stop()
        if recorder is not None:
            recorder.close()
