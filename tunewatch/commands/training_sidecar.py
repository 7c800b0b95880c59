"""`tunewatch training-sidecar`: training metrics for a trainer that cannot be changed (:9946).

The sidecar reads the trainer's status file (`training.status_file`) and its queue
directories on every scrape; exporters/training/status_collector.py does the reading and
serving, this module parses the flags, which win over the config:

    tunewatch training-sidecar --status-file status/training_status.json \\
        --queue-dir queue/high:high --queue-dir queue/normal --stale-after 600
"""

from __future__ import annotations

import argparse
import os

from exporters.server import add_web_arguments, run_until_signal
from exporters.training.status_collector import StatusFileCollector, start_sidecar
from tunewatch.core.config import Config, QueueDir
from tunewatch.core.errors import UsageError

PRIORITIES = ("high", "normal", "low")


def parse_queue_dir(text: str) -> QueueDir:
    """PATH or PATH:PRIORITY (high, normal, low)."""
    path, sep, priority = text.rpartition(":")
    if not sep or priority not in PRIORITIES:
        return QueueDir(path=text, priority="normal")
    if not path:
        raise UsageError(f"--queue-dir {text!r}: expected PATH or PATH:PRIORITY")
    return QueueDir(path=path, priority=priority)  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status-file", default=None,
                        help="the trainer's status file (default: training.status_file)")
    parser.add_argument("--queue-dir", action="append", default=None, metavar="PATH[:PRIORITY]",
                        help="a directory of queued *.jsonl files; repeatable; priority "
                             "high, normal (default) or low (default: training.queue_dirs)")
    parser.add_argument("--stale-after", type=float, default=None, metavar="SECONDS",
                        help="no update for this long means stale "
                             "(default: training.stale_after_seconds)")
    add_web_arguments(parser, "training")


def run(args: argparse.Namespace, cfg: Config) -> int:
    tc = cfg.training
    queue_dirs = ([parse_queue_dir(q) for q in args.queue_dir] if args.queue_dir
                  else list(tc.queue_dirs))
    stale = tc.stale_after_seconds if args.stale_after is None else args.stale_after
    if stale <= 0:
        raise UsageError(f"--stale-after {stale}: must be positive")
    collector = StatusFileCollector(
        args.status_file or tc.status_file, queue_dirs=queue_dirs, stale_after_seconds=stale,
        run=os.environ.get("TUNEWATCH_RUN") or cfg.run,
        max_logged_metrics=tc.max_logged_metrics,
    )
    server = start_sidecar(collector, tc, args.listen_address, args.web_config_file)
    run_until_signal(server.stop)
    return 0
