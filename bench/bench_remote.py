"""Benchmark: evaluating through the inference server against evaluating in process.

Why: the remote backend trades a GPU on the eval host for HTTP round trips, job polling and
the server's one-job-at-a-time queue. This measures what that costs on the same checkpoint:
examples per second of the local batched pass and of the remote pass through the test
server (tests/inference_server.py, a real process serving the model through LocalBackend),
the mean wait per job, and whether both give the same exact match (they must).

    python bench/bench_remote.py                       # trains a tiny model first
    python bench/bench_remote.py --checkpoint DIR --data DIR --json

Exit status 1 when the two passes disagree on any answer.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
from common import bench_parser, checkpoint_workdir, write_figures  # noqa: E402

log = logging.getLogger("bench.remote")


def measure(checkpoint: Path, data: Path, limit: int | None, work: Path) -> dict[str, Any]:
    """Local pass, then remote pass through a freshly started server on a free port."""
    from inference_server import InferenceServer

    from evaluators import evaluate_checkpoint
    from evaluators.backends.remote import RemoteEvaluator, model_id_for
    from evaluators.remote.client import RemoteStats
    from tunewatch.core.config import Config

    base = dataclasses.replace(Config().evaluator, device="cpu")
    started = time.perf_counter()
    local = evaluate_checkpoint(checkpoint, base, data_dir=data, limit=limit)
    local_seconds = time.perf_counter() - started
    model_id = model_id_for(base.remote, "bench", checkpoint, None)
    server = InferenceServer(work / "server", checkpoint=checkpoint, model_id=model_id).start()
    try:
        cfg = dataclasses.replace(base, backend="remote", remote=dataclasses.replace(
            base.remote, url=server.url))
        stats = RemoteStats()
        started = time.perf_counter()
        remote = RemoteEvaluator(cfg, "bench", stats)(checkpoint, cfg, data_dir=data,
                                                      limit=limit)
        remote_seconds = time.perf_counter() - started
    finally:
        server.stop()
    snap = stats.snapshot()
    # The server generates one example per job (no padding); a local pass at batch size 1
    # does the same computation, so its answers must be identical on any machine (a padded
    # batch may tip a near-tie the other way: tests/test_eval_correctness.py bounds that).
    unbatched = evaluate_checkpoint(checkpoint, dataclasses.replace(base, batch_size=1),
                                    data_dir=data, limit=limit)
    same = [o.generated for o in unbatched.outcomes] == [o.generated for o in remote.outcomes]
    return {
        "examples": local.overall.examples,
        "local_seconds": round(local_seconds, 3),
        "remote_seconds": round(remote_seconds, 3),
        "local_examples_per_second": round(local.run.examples_per_second, 1),
        "remote_examples_per_second": round(remote.run.examples_per_second, 1),
        "remote_mean_job_wait_seconds": round(snap["job_seconds"] / max(snap["jobs"], 1), 4),
        "remote_retries": sum(snap["retries"].values()),
        "exact_match_local": local.overall.exact_match.value,
        "exact_match_remote": remote.overall.exact_match.value,
        "answers_identical": same,
    }


def log_figures(figures: dict[str, Any]) -> str:
    """The text form: one log line a figure on stderr, beside the server's own log (nothing
    for stdout, which holds only the --json result)."""
    for key, value in figures.items():
        log.info("%-32s %s", key, value)
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, checkpoint=True)
    parser.add_argument("--limit", type=int, default=None, help="examples (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    with checkpoint_workdir(args, "bench-remote-") as (work, checkpoint, data):
        figures = measure(checkpoint, data, args.limit, work)
    write_figures(figures, args.json, log_figures)
    if not figures["answers_identical"]:
        log.error("the remote pass gave other answers than the local one")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
