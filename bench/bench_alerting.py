"""Benchmark: from a damaged checkpoint written to the EvalRegression notification received.

Why: the seeds wrote `regression_detected: true` into a JSON file that paged nobody; the
figure that matters now is how long a team waits for the page. This runs the real pipeline
on 127.0.0.1 (the tiny model's checkpoints, `tunewatch evaluate`, Prometheus with the
repository's eval alert rules, Alertmanager with its routing, `tunewatch alert-log`), writes
a damaged copy of the newest checkpoint and times the notification. The floor is set by
configuration, and the report breaks the time down: evaluation, the rule's `for: 1m`, and
Alertmanager's group_wait (30 s in alertmanager.yml; this run keeps it).

    python bench/bench_alerting.py          # prints the figures; exit 1 if nothing arrives
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from common import bench_parser, write_figures  # noqa: E402
from services import AlertPipeline, wait_for  # noqa: E402

from tunewatch.core.config import Config  # noqa: E402
from tunewatch.demo.tinymodel import answer_key_suite, blank_checkpoint, build_tiny_run  # noqa: E402

log = logging.getLogger("bench_alerting")


def measure(work: Path, timeout: float) -> dict[str, Any]:
    run = build_tiny_run(work / "tiny", max_steps=300, save_steps=100)
    ckpts = work / "checkpoints"
    ckpts.mkdir()
    for src in run.checkpoints:
        shutil.copytree(src, ckpts / src.name)
    # The suite is checkpoint-300's own answer key and the damaged copy has every weight
    # zeroed, so the drop is real on any machine (tunewatch/demo/tinymodel.py says why).
    suite = work / "answer-key"
    answer_key_suite(run.checkpoints[-1], run.data_dir, suite,
                     Config().evaluator.max_new_tokens)
    pipe = AlertPipeline(work, REPO)  # the repository's group_wait (30 s)
    step = 'tunewatch_eval_checkpoint_step{job="tunewatch-evaluator"}'
    try:
        prom = pipe.start(ckpts, suite, run="bench", host="bench").prom
        prom.wait_value(step, lambda v: v == 300, timeout=120)
        written = time.monotonic()
        blank_checkpoint(ckpts / "checkpoint-300", ckpts / "checkpoint-301")
        prom.wait_value(step, lambda v: v == 301, timeout=120)
        evaluated = time.monotonic() - written
        prom.wait_value('count(ALERTS{alertname="EvalRegression",alertstate="firing"})',
                        lambda v: v >= 1, timeout=timeout)
        firing = time.monotonic() - written
        wait_for(lambda: pipe.firing("EvalRegression"), timeout, "the notification")
        received = time.monotonic() - written
    finally:
        pipe.stop()
    return {"evaluated_seconds": round(evaluated, 1), "firing_seconds": round(firing, 1),
            "notification_seconds": round(received, 1)}


def as_text(fig: dict[str, Any]) -> str:
    return (f"damaged checkpoint written -> evaluated and published: {fig['evaluated_seconds']}"
            f" s; -> EvalRegression firing in Prometheus (for: 1m): {fig['firing_seconds']} s; "
            f"-> notification at the webhook (group_wait 30s): {fig['notification_seconds']} s\n")


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-alerting-") as tmp:
        fig = measure(Path(tmp), args.timeout)
    write_figures(fig, args.json, as_text, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
