"""`tunewatch compare CHECKPOINT_A CHECKPOINT_B --data DIR`: are two checkpoints different?

Why: the seeds' compare_checkpoints printed two accuracies side by side, which cannot tell a
real change from noise on a 150-example suite. This evaluates both checkpoints on the same
examples and prints the paired table (both right, fixed, broken, both wrong) overall and per
difficulty, the exact McNemar p-value, the difference in exact match with its confidence
interval, and whether B is a regression from A by the rule the alerts use (DESIGN section 9).
Exit status: 0 compared, 1 a checkpoint could not be evaluated, 2 a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from evaluators.compare import compare, outcomes_of
from evaluators.comparison_report import to_json, to_text
from evaluators.data import load_suite
from evaluators.errors import EvaluationError
from evaluators.selection import (
    Overrides,
    add_backend_arguments,
    backend_config_flags,
    evaluator_for,
)
from tunewatch.core.config import Config

log = logging.getLogger("tunewatch.compare")
# The keys --backend and --remote-url set, read with the configuration (tunewatch/cli.py).
config_flags = backend_config_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint_a", help="the baseline checkpoint (e.g. the earlier one)")
    parser.add_argument("checkpoint_b", help="the checkpoint compared with it")
    parser.add_argument("--data", default=None,
                        help="validation suite directory (default: evaluator.data)")
    parser.add_argument("--limit", type=int, default=None,
                        help="compare on a quick subset of N examples")
    parser.add_argument("--device", default=None, help="override evaluator.device")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    add_backend_arguments(parser)


def run(args: argparse.Namespace, cfg: Config) -> int:
    chosen = evaluator_for(cfg, Overrides.from_flags(args))
    ev = chosen.config
    try:
        # Through the inference server, each checkpoint must be the served one in turn:
        # remote.activate switches it (otherwise the second is refused as the wrong model).
        suite = load_suite(Path(ev.data), ev.files, ev.derive_labels)
        a = chosen.evaluate(args.checkpoint_a, ev, suite=suite, limit=args.limit)
        b = chosen.evaluate(args.checkpoint_b, ev, suite=suite, limit=args.limit)
    except EvaluationError as exc:
        log.error("cannot compare: %s [reason=%s]", exc, exc.reason)
        return 1
    comp = compare(outcomes_of(b.outcomes), outcomes_of(a.outcomes), baseline="a",
                   baseline_step=a.step or 0, rules=ev.regression,
                   confidence_level=ev.confidence_level)
    if comp is None:
        log.error("the two evaluations share no example; nothing to compare")
        return 1
    sys.stdout.write(to_json(a, b, comp) + "\n" if args.json else to_text(a, b, comp))
    return 0
