"""Benchmark: every tunewatch server under 50 concurrent scrapers for 60 s.

Why: monitoring must be the last thing to fall over. Several Prometheus servers, a
federation, a curious engineer with `watch curl` and Grafana's explore tab can all hit an
exporter at once; it must answer every one of them (no error, no 503 at this load) with a
latency that stays small. This starts the real processes (the host exporter on recorded
readings of 16 GPUs, the training sidecar on a status file, and the evaluator serving a
recorded measurement of the tiny model, tests/fixtures/fleet/), then runs N scraper threads
against each in turn, each thread scraping in a loop over its own keep-alive connection with
Prometheus's request headers (bench/common.py: gzip, the answer decompressed).

    python bench/bench_load.py                      # 50 scrapers, 60 s per server
    python bench/bench_load.py --smoke              # 10 scrapers, 3 s (a test runs it)

Exit status 1 when any scrape failed (full run only).
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from common import (  # noqa: E402
    Scraper,
    bench_parser,
    percentiles,
    replicate_readings,
    start_tunewatch,
    stop_process,
    write_figures,
)
from services import free_port  # noqa: E402

log = logging.getLogger("bench_load")


@dataclass
class Server:
    """A started tunewatch process to put under load."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        stop_process(self.proc, 10)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1


def start(name: str, args: list[str], workdir: Path, env: dict[str, str]) -> Server:
    port = free_port()
    proc = start_tunewatch(args, port, workdir, env)
    return Server(name, port, proc, workdir / f"{args[0]}.log")


def scraper(port: int, stop_at: float, tally: Tally) -> None:
    with Scraper("127.0.0.1", port) as target:
        while time.monotonic() < stop_at:
            try:
                result = target.scrape()  # a failure drops the connection; the next reconnects
            except (OSError, http.client.HTTPException) as exc:
                tally.error(type(exc).__name__)
                continue
            if result.status != 200:
                tally.error(f"http_{result.status}")
                continue
            with tally.lock:
                tally.latencies.append(result.seconds)


def load(server: Server, scrapers: int, seconds: float) -> dict[str, Any]:
    tally = Tally()
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=scraper, args=(server.port, stop_at, tally))
               for _ in range(scrapers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(tally.latencies)
    spread = percentiles(lat)
    return {
        "server": server.name, "scrapers": scrapers, "seconds": seconds,
        "scrapes": len(lat), "errors": dict(tally.errors),
        "scrapes_per_second": round(len(lat) / seconds, 1),
        "p50_ms": spread["p50_ms"], "p99_ms": spread["p99_ms"],
    }


def servers(workdir: Path, only: list[str]) -> list[tuple[str, list[str], dict[str, str]]]:
    """What to start: (name, tunewatch arguments, environment)."""
    readings = replicate_readings(16, workdir)
    specs = [("exporter", ["exporter", "--no-collector.files"],
              {"TUNEWATCH_EXPORTER__GPU_READINGS_FILE": str(readings)})]
    status = workdir / "training_status.json"
    status.write_text(json.dumps({"state": "training", "step": 120, "max_steps": 1000,
                                  "loss": 1.25, "learning_rate": 1e-4,
                                  "updated_at": time.time()}))
    specs.append(("training-sidecar", ["training-sidecar", "--status-file", str(status)],
                  {}))
    # The evaluator serves a real measurement (three evaluated checkpoints of the tiny
    # model, tests/fixtures/fleet/evaluator_state.json) without evaluating anything here.
    state_dir = workdir / "evaluator-state"
    state_dir.mkdir(exist_ok=True)
    shutil.copy(REPO / "tests" / "fixtures" / "fleet" / "evaluator_state.json",
                state_dir / "state.json")
    (workdir / "checkpoints").mkdir(exist_ok=True)
    specs.append(("evaluator", ["evaluate", "--checkpoints", str(workdir / "checkpoints"),
                                "--data", str(workdir), "--state-dir", str(state_dir)], {}))
    return [s for s in specs if not only or s[0] in only]


def as_text(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"
        lines.append(f"{r['server']:>18}: {r['scrapers']} scrapers x {r['seconds']:g} s: "
                     f"{r['scrapes']} scrapes ({r['scrapes_per_second']}/s), p50 "
                     f"{r['p50_ms']} ms, p99 {r['p99_ms']} ms, errors: {errors}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--smoke", action="store_true", help="10 scrapers for 3 s")
    parser.add_argument("--scrapers", type=int, default=None, help="default 50 (smoke 10)")
    parser.add_argument("--seconds", type=float, default=None, help="default 60 (smoke 3)")
    parser.add_argument("--only", nargs="*", default=[], help="server names to load")
    args = parser.parse_args(argv)
    scrapers = args.scrapers or (10 if args.smoke else 50)
    seconds = args.seconds or (3.0 if args.smoke else 60.0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        for name, targs, env in servers(Path(tmp), args.only):
            server = start(name, targs, Path(tmp), env)
            try:
                results.append(load(server, scrapers, seconds))
            finally:
                server.stop()
    write_figures(results, args.json, as_text, indent=2)
    failed = [r["server"] for r in results if r["errors"] or not r["scrapes"]]
    if failed and not args.smoke:
        log.error("scrapes failed on: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
