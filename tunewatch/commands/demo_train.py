"""`tunewatch demo-train`: the flags of the demo trainer (`make up`'s workload), and running it.

Why this is all: the demo (the tiny model, pacing, the damaged checkpoint) lives in
tunewatch/demo/; this command takes flags over the `demo:` config and, unless told to exit,
keeps the process up after training so Prometheus keeps seeing the finished run.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from tunewatch.core.config import Config
from tunewatch.demo.trainer import DemoSettings, train_demo


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


def settings(args: argparse.Namespace, cfg: Config) -> DemoSettings:
    """Flags over the `demo:` and `training:` config."""
    return DemoSettings(
        output_dir=Path(args.output_dir or cfg.demo.output_dir),
        max_steps=args.max_steps or cfg.demo.max_steps,
        save_steps=args.save_steps or cfg.demo.save_steps,
        step_delay_seconds=(cfg.demo.step_delay_seconds if args.step_delay is None
                            else args.step_delay),
        listen_address=args.listen or cfg.training.listen_address,
        fresh=args.fresh,
    )


def run(args: argparse.Namespace, cfg: Config) -> int:
    train_demo(cfg, settings(args, cfg))
    if args.exit_when_done:
        return 0
    threading.Event().wait()
    return 0
