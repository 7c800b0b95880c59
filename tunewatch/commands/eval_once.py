"""`tunewatch eval-once CHECKPOINT --data DIR`: evaluate one checkpoint and print the report.

Why a command: the seeds' quick_validation.py was how a person checked a checkpoint by hand;
this is the same check done by the evaluation core the daemon uses, so a figure seen at the
terminal is the figure the dashboards show. Exit status: 0 evaluated (skipped lines are
named in the report), 1 the checkpoint or suite could not be evaluated (one log line naming
the cause, no traceback), 2 a usage error.

`--quick` is for a check by hand: exact match, failure modes and confidence from the
generation alone, without the teacher-forced pass (cross-entropy is absent). The daemon has
no such flag: what it publishes always has every figure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from evaluators.errors import EvaluationError
from evaluators.evaluate import evaluate_checkpoint
from evaluators.report import to_json, to_text
from evaluators.selection import (
    Overrides,
    add_backend_arguments,
    backend_config_flags,
    evaluator_for,
)
from tunewatch.core.config import Config

log = logging.getLogger("tunewatch.eval_once")
# The keys --backend and --remote-url set, read with the configuration (tunewatch/cli.py).
config_flags = backend_config_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory (config.json, weights, tokenizer)")
    parser.add_argument("--data", default=None,
                        help="validation suite directory (default: evaluator.data)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate a quick subset of N examples, spread over difficulties")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override evaluator.batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="override evaluator.max_new_tokens")
    parser.add_argument("--device", default=None,
                        help="override evaluator.device (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--quick", action="store_true",
                        help="exact match and confidence only: no teacher-forced pass,"
                             " no cross-entropy")
    add_backend_arguments(parser)


def run(args: argparse.Namespace, cfg: Config) -> int:
    chosen = evaluator_for(cfg, Overrides.from_flags(args))
    options: dict[str, Any] = {}
    if args.quick and chosen.evaluate is evaluate_checkpoint:
        options["quick"] = True
    elif args.quick:  # an inference server only generates: there is no pass to leave out
        log.info("--quick: the remote backend never computes cross-entropy")
    try:
        result = chosen.evaluate(args.checkpoint, chosen.config, limit=args.limit, **options)
    except EvaluationError as exc:
        log.error("cannot evaluate %s: %s [reason=%s]", args.checkpoint, exc, exc.reason)
        return 1
    sys.stdout.write(to_json(result) + "\n" if args.json else to_text(result))
    return 0
