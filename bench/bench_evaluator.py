"""Benchmark: from a checkpoint's last file written to its evaluation start (target < 1 s).

Why: the seeds polled every 5 minutes, so a checkpoint waited up to 5 minutes before anyone
looked at it. This runs the real `tunewatch evaluate` process on a real tiny checkpoint,
writes new `checkpoint-<step>/` directories into its watched directory the way the
transformers Trainer does (weights and tokenizer first, `trainer_state.json` last), and reads
the daemon's own `tunewatch_eval_discovery_delay_seconds` for each (evaluation start minus
the newest file mtime), plus the evaluation's duration.

    python bench/bench_evaluator.py                       # trains a tiny model first
    python bench/bench_evaluator.py --checkpoint DIR --data DIR --rounds 5 --json

Exit status 1 when the median delay is 1 second or more.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from common import bench_parser, checkpoint_workdir, scrape_once, write_figures  # noqa: E402
from services import free_port, wait_for  # noqa: E402

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "chat_template.jinja")


def _samples(url: str) -> dict[str, float]:
    """The evaluator's samples as Prometheus would scrape them; {} while it does not answer."""
    try:
        # Prometheus's headers (openmetrics-first Accept, gzip), as every bench scrape.
        result = scrape_once(url + "/metrics", timeout_seconds=5.0)
    except (OSError, http.client.HTTPException):
        return {}
    return result.samples() if result.status == 200 else {}


def write_checkpoint(source: Path, target: Path) -> None:
    """Copy without keeping mtimes (a fresh write), trainer_state.json last."""
    target.mkdir(parents=True)
    for name in FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    state = json.loads((source / "trainer_state.json").read_text())
    state["global_step"] = int(target.name.split("-")[1])
    (target / "trainer_state.json").write_text(json.dumps(state))


def measure(checkpoint: Path, data: Path, rounds: int, work: Path) -> dict[str, object]:
    watched = work / "checkpoints"
    watched.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
    env["TUNEWATCH_EVALUATOR__DEVICE"] = "cpu"
    log = (work / "evaluator.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunewatch", "evaluate", "--checkpoints", str(watched),
         "--data", str(data), "--state-dir", str(work / "state"), "--limit", "30",
         "--web.listen-address", f"127.0.0.1:{port}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    delays: list[float] = []
    durations: list[float] = []
    try:
        wait_for(lambda: "tunewatch_eval_evaluations_total" in _samples(url), 60,
                 f"the evaluator to start (see {work / 'evaluator.log'})", interval=0.05)
        for i in range(rounds):
            write_checkpoint(checkpoint, watched / f"checkpoint-{(i + 1) * 100}")
            wait_for(lambda i=i: _samples(url).get("tunewatch_eval_evaluations_total", 0)
                     >= i + 1, 120, f"round {i + 1} to be evaluated", interval=0.05)
            figures = _samples(url)
            delays.append(figures["tunewatch_eval_discovery_delay_seconds"])
            durations.append(figures["tunewatch_eval_duration_seconds"])
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
    return {
        "rounds": rounds,
        "discovery_delay_seconds": delays,
        "discovery_delay_median_seconds": statistics.median(delays),
        "discovery_delay_max_seconds": max(delays),
        "evaluation_duration_median_seconds": statistics.median(durations),
        "seeds_poll_interval_seconds": 300,
    }


def as_text(figures: dict[str, object]) -> str:
    return (f"discovery delay (last file written -> evaluation start) over "
            f"{figures['rounds']} checkpoints: median "
            f"{figures['discovery_delay_median_seconds']:.3f}s, max "
            f"{figures['discovery_delay_max_seconds']:.3f}s (seeds: up to 300s); "
            f"evaluation {figures['evaluation_duration_median_seconds']:.2f}s median\n")


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, checkpoint=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with checkpoint_workdir(args, "bench-evaluator-") as (work, checkpoint, data):
        figures = measure(checkpoint, data, args.rounds, work)
    write_figures(figures, args.json, as_text)
    return 0 if float(figures["discovery_delay_median_seconds"]) < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
