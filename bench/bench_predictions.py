"""Benchmark: what recording predictions adds to a checkpoint's evaluation (target < 2%).

Why: issue 9 allows the predictions store to cost the evaluator almost nothing. This
evaluates a real tiny checkpoint on the whole suite once, then records its predictions the
way the daemon does, twice: with the recorder's thread (what the evaluation thread pays:
picking the rows) and inline (picking plus writing to SQLite, the worst case), with the
default sample plus every failed example. Figures are medians over --rounds.

    python bench/bench_predictions.py                     # trains a tiny model first
    python bench/bench_predictions.py --checkpoint DIR --data DIR --json

Exit status 1 when the inline overhead is 2% of the evaluation time or more.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from common import bench_parser, checkpoint_workdir, write_figures  # noqa: E402

log = logging.getLogger("bench.predictions")


def measure(checkpoint: Path, data: Path, rounds: int, work: Path) -> dict[str, Any]:
    """Evaluation seconds and recording seconds (on-thread and inline), medians."""
    from evaluators import evaluate_checkpoint, load_suite
    from evaluators.predictions.recorder import Recorder
    from evaluators.predictions.spool import Spool
    from evaluators.predictions.store import open_store
    from tunewatch.core.config import EvaluatorConfig, PredictionsConfig

    suite = load_suite(data, [])
    started = time.perf_counter()
    result = evaluate_checkpoint(checkpoint, EvaluatorConfig(device="cpu"), suite=suite,
                                 show_progress=False)
    evaluation = time.perf_counter() - started
    cfg = PredictionsConfig(record_failed=True)
    figures: dict[str, list[float]] = {"on_thread": [], "inline": []}
    for mode in ("on_thread", "inline"):
        store = open_store("", state_dir=work / mode)
        rec = Recorder(cfg, store=store, spool=Spool(work / mode / "spool"), run="bench",
                       background=mode == "on_thread")
        for i in range(rounds):
            started = time.perf_counter()
            rec.record(step=i + 1, checkpoint=checkpoint, result=result,
                       examples=suite.examples)
            figures[mode].append(time.perf_counter() - started)
        rec.close()
    rows = len(suite.examples)
    on_thread = statistics.median(figures["on_thread"])
    inline = statistics.median(figures["inline"])
    return {"examples": rows, "evaluation_seconds": evaluation,
            "record_on_thread_seconds": on_thread, "record_inline_seconds": inline,
            "overhead_on_thread_ratio": on_thread / evaluation,
            "overhead_inline_ratio": inline / evaluation, "rounds": rounds}


def as_text(figures: dict[str, Any]) -> str:
    return (f"predictions: evaluation of {figures['examples']} examples "
            f"{figures['evaluation_seconds']:.2f}s; recording adds "
            f"{figures['record_on_thread_seconds'] * 1e3:.2f} ms on the evaluation thread "
            f"({figures['overhead_on_thread_ratio'] * 100:.2f}%), "
            f"{figures['record_inline_seconds'] * 1e3:.2f} ms with the SQLite write inline "
            f"({figures['overhead_inline_ratio'] * 100:.2f}%; target < 2%)\n")


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, checkpoint=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with checkpoint_workdir(args, "bench-predictions-") as (work, checkpoint, data):
        figures = measure(checkpoint, data, args.rounds, work)
    write_figures(figures, args.json, as_text)
    return 0 if figures["overhead_inline_ratio"] < 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
