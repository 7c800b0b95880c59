"""Benchmark: CPU of tunewatch's servers with nothing to do (target < 0.5% of a core each).

Why: an idle evaluator used 5.4-6.6% of a core, waking itself with its own reads of
trainer_state.json, and the cost grew with the checkpoints it kept. Idle cost is a figure
like any other (DESIGN section 8), so this measures, over the same window:

- the evaluator (`tunewatch evaluate`) over a directory of already evaluated checkpoints;
- the host exporter (`tunewatch exporter`), following that directory and the evaluator;
- the training sidecar (`tunewatch training-sidecar`) over a status file written once;

each scraped every `--interval` seconds (15 s, Prometheus's usual interval) as Prometheus
scrapes (bench/common.py: its headers, gzip, one keep-alive connection per target). CPU is
the process's user + system time from /proc/<pid>/stat (every thread), from after start-up
and warm-up to the end of the window, as a percentage of one core.

    python bench/bench_idle.py                          # trains a tiny model first
    python bench/bench_idle.py --checkpoint DIR --data DIR --duration 60 --json
    python bench/bench_idle.py --repo /tmp/head         # the servers of another checkout

Exit status 1 when any process is at or over the target.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from bench_evaluator import write_checkpoint  # noqa: E402
from common import (  # noqa: E402
    Scraper,
    bench_parser,
    checkpoint_workdir,
    cpu_seconds,
    write_figures,
)
from services import free_port, wait_for  # noqa: E402

log = logging.getLogger("bench.idle")

TARGET_PERCENT = 0.5


@dataclass
class Server:
    """One `tunewatch` server process under measurement."""

    name: str
    argv: list[str]
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    scraper: Scraper | None = None
    scrapes: int = 0
    scrape_bytes: list[int] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads), from /proc/<pid>/stat."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def get(self, path: str) -> tuple[int, bytes]:
        """A plain GET for polling (/-/ready, start-up); never part of the measurement."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def scrape(self) -> None:
        """One scrape as Prometheus does it (bench/common.py)."""
        if self.scraper is None:
            self.scraper = Scraper.for_url(self.url)
        answer = self.scraper.scrape()
        if answer.status != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {answer.status}")
        self.scrapes += 1
        self.scrape_bytes.append(len(answer.body))


def _env(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
    env.update({"TUNEWATCH_RUN": "bench-idle", "TUNEWATCH_EVALUATOR__DEVICE": "cpu",
                "PYTHONPATH": str(repo)})
    return env


def prepare(checkpoint: Path, data: Path, work: Path, count: int, repo: Path) -> Path:
    """`count` checkpoints, evaluated once by `tunewatch evaluate --once`; their directory."""
    watched = work / "checkpoints"
    watched.mkdir()
    for i in range(count):
        write_checkpoint(checkpoint, watched / f"checkpoint-{(i + 1) * 100}")
    done = subprocess.run(
        [sys.executable, "-m", "tunewatch", "evaluate", "--once", "--checkpoints", str(watched),
         "--data", str(data), "--state-dir", str(work / "state"), "--limit", "30",
         "--web.listen-address", "127.0.0.1:0"],
        cwd=repo, env=_env(repo), capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"evaluating the checkpoints failed:\n{done.stderr[-2000:]}")
    return watched


def servers(watched: Path, data: Path, work: Path) -> list[Server]:
    """The three servers' command lines (config: the defaults plus what they watch)."""
    status = work / "training_status.json"
    status.write_text(json.dumps({"state": "training", "step": 120, "max_steps": 1000,
                                  "loss": 1.25, "learning_rate": 2e-5,
                                  "updated_at": time.time()}))
    config = work / "tunewatch.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "exporter": {"checkpoint_dirs": [str(watched)],
                     "processes": [{"name": "evaluator",
                                    "cmdline_pattern": "tunewatch evaluate"}]},
    }))
    common = ["--config", str(config)]
    return [
        Server("evaluator", ["evaluate", *common, "--checkpoints", str(watched), "--data",
                             str(data), "--state-dir", str(work / "state"), "--limit", "30"]),
        Server("exporter", ["exporter", *common]),
        Server("sidecar", ["training-sidecar", *common, "--status-file", str(status)]),
    ]


def start(server: Server, work: Path, repo: Path) -> None:
    port = free_port()
    server.url = f"http://127.0.0.1:{port}"
    log_file = (work / f"{server.name}.log").open("w")
    # `tunewatch CMD --config FILE ...`: --config is accepted after the command too.
    server.proc = subprocess.Popen(
        [sys.executable, "-m", "tunewatch", *server.argv,
         "--web.listen-address", f"127.0.0.1:{port}"],
        cwd=repo, env=_env(repo), stdout=log_file, stderr=subprocess.STDOUT)
    wait_for(lambda: server.get("/-/ready")[0] == 200 or server.proc.poll() is not None, 120,
             f"{server.name} to be ready", interval=0.2)
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.name} exited; see {work / (server.name + '.log')}")


def measure(watched: Path, data: Path, work: Path, repo: Path, duration: float,
            interval: float, warmup: float) -> dict[str, Any]:
    procs = servers(watched, data, work)
    try:
        for server in procs:
            start(server, work, repo)
        evaluator = procs[0]
        # An untimed readiness poll; every timed scrape goes through common.Scraper with
        # Prometheus's headers (the openmetrics-first Accept header, gzip).
        wait_for(lambda: b"tunewatch_eval_newest_checkpoint_step " in evaluator.get(
            "/metrics")[1], 60, "the evaluator's first scan", interval=0.2)
        for server in procs:  # a first scrape builds what later ones reuse
            server.scrape()
        time.sleep(warmup)
        before = {s.name: s.cpu_seconds() for s in procs}
        started = time.monotonic()
        ticks = int(duration // interval)
        for k in range(ticks):
            delay = started + k * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for server in procs:
                server.scrape()
        time.sleep(max(0.0, started + duration - time.monotonic()))
        wall = time.monotonic() - started
        after = {s.name: s.cpu_seconds() for s in procs}
        if any(s.proc is not None and s.proc.poll() is not None for s in procs):
            raise RuntimeError("a server exited during the measurement")
    finally:
        for server in procs:
            if server.scraper is not None:
                server.scraper.close()
            if server.proc is not None and server.proc.poll() is None:
                server.proc.terminate()
                server.proc.wait(timeout=15)
    return {
        "window_seconds": round(wall, 2),
        "scrape_interval_seconds": interval,
        "checkpoints": len(list(watched.iterdir())),
        "repo": str(repo),
        "processes": {
            s.name: {
                "cpu_seconds": round(after[s.name] - before[s.name], 3),
                "cpu_percent_of_a_core": round(
                    100.0 * (after[s.name] - before[s.name]) / wall, 3),
                "scrapes": s.scrapes - 1,
                "scrape_bytes": s.scrape_bytes[-1],
            }
            for s in procs
        },
        "target_percent": TARGET_PERCENT,
    }


def as_text(figures: dict[str, Any]) -> str:
    lines = [f"{name:10s} idle CPU {fig['cpu_percent_of_a_core']:.3f}% of a core "
             f"({fig['cpu_seconds']:.2f} s over {figures['window_seconds']:.0f} s, "
             f"{fig['scrapes']} scrapes every {figures['scrape_interval_seconds']:g} s)"
             for name, fig in figures["processes"].items()]
    lines.append(f"target: under {TARGET_PERCENT}% of a core each; {figures['checkpoints']} "
                 f"evaluated checkpoints; servers from {figures['repo']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, checkpoint=True)
    parser.add_argument("--checkpoints", type=int, default=4,
                        help="evaluated checkpoints the evaluator keeps watching")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=15.0, help="scrape interval")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds after start-up before the window opens")
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="run the servers of this checkout (e.g. a worktree of HEAD)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    repo = args.repo.resolve()
    with checkpoint_workdir(args, "bench-idle-") as (work, checkpoint, data):
        watched = prepare(checkpoint, data, work, args.checkpoints, repo)
        try:
            figures = measure(watched, data, work, repo, args.duration, args.interval,
                              args.warmup)
        except RuntimeError:
            for path in sorted(work.glob("*.log")):
                log.error("%s:\n%s", path.name, path.read_text()[-3000:])
            raise
        shutil.rmtree(watched, ignore_errors=True)
    write_figures(figures, args.json, as_text)
    over = [n for n, f in figures["processes"].items()
            if f["cpu_percent_of_a_core"] >= TARGET_PERCENT]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
