"""Benchmark: the `make up` stack soaked for minutes, judged by Prometheus's own data.

Why: unit tests and short benchmarks start one process at a time; a user runs the whole
stack for hours. This runs `tunewatch up` (node_exporter, Alertmanager, the alert-log
receiver, the demo trainer with the callback, the host exporter, the evaluator, Prometheus
with the repository's rules) on free 127.0.0.1 ports under a temporary directory, lets it
run, and then asks the stack's Prometheus, not a stopwatch of ours:

- each target's `scrape_duration_seconds` p99 (reported: on a small machine the demo's
  training and evaluation share the cores with every scrape, node_exporter's included)
  and its failed scrapes (`up == 0`; target 0);
- each tunewatch process's CPU share (`process_cpu_seconds_total`) and resident-memory
  growth after the warm-up (`process_resident_memory_bytes`; target under 5%);
- the alerts that fired, set against the demo's expected ones (it writes a damaged
  checkpoint on purpose, see docs/runbook.md).

    python bench/bench_soak.py                    # 10 minutes, 2 of them warm-up
    python bench/bench_soak.py --minutes 3 --warmup-minutes 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from services import free_port, wait_for  # noqa: E402

log = logging.getLogger("bench_soak")

TUNEWATCH_JOBS = ("tunewatch-training", "tunewatch-exporter", "tunewatch-evaluator")
# Alerts the demo is built to raise: a damaged checkpoint (EvalRegression and its loss
# twin), the tiny model's poor calibration, and the always-firing Watchdog.
EXPECTED_ALERTS = frozenset({"EvalRegression", "EvalLossRegression",
                             "EvalCalibrationDegraded", "Watchdog"})
RSS_GROWTH_TARGET = 0.05


def stack_environment(work: Path) -> tuple[dict[str, str], int]:
    """`tunewatch up` on free ports with its data under `work`; returns (env, Prometheus port)."""
    prom_port = free_port()
    env = {
        **os.environ,
        "TUNEWATCH_STACK__DATA_DIR": str(work / "var"),
        "TUNEWATCH_STACK__PROMETHEUS_PORT": str(prom_port),
        "TUNEWATCH_STACK__ALERTMANAGER_PORT": str(free_port()),
        "TUNEWATCH_STACK__NODE_EXPORTER_PORT": str(free_port()),
        "TUNEWATCH_STACK__WEBHOOK_PORT": str(free_port()),
        "TUNEWATCH_EXPORTER__LISTEN_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNEWATCH_TRAINING__LISTEN_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNEWATCH_EVALUATOR__LISTEN_ADDRESS": f"127.0.0.1:{free_port()}",
        "TUNEWATCH_RUN": "soak",
    }
    return env, prom_port


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """An instant query against the stack's Prometheus; the result vector."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=30) as resp:
        answer = json.load(resp)
    if answer.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {answer}")
    return list(answer["data"]["result"])


def by_target(base: str, promql: str) -> dict[str, float]:
    """`job instance` -> value of a query whose series carry job and instance."""
    return {f"{r['metric'].get('job', '?')} {r['metric'].get('instance', '?')}":
            float(r["value"][1]) for r in query(base, promql)}


def scrape_figures(base: str, window: str) -> dict[str, dict[str, float]]:
    p99 = by_target(base, f"quantile_over_time(0.99, scrape_duration_seconds[{window}])")
    failed = by_target(base, f"sum_over_time((1 - up)[{window}:])")
    scrapes = by_target(base, f"count_over_time(up[{window}])")
    return {target: {"p99_ms": round(p99[target] * 1000, 2),
                     "failed_scrapes": failed.get(target, 0.0),
                     "scrapes": scrapes.get(target, 0.0)} for target in sorted(p99)}


def process_figures(base: str, after_warmup: str) -> dict[str, dict[str, float]]:
    """CPU share and RSS growth of each tunewatch process since the end of the warm-up."""
    jobs = "|".join(TUNEWATCH_JOBS)
    sel = f'{{job=~"{jobs}"}}'
    cpu = by_target(base, f"rate(process_cpu_seconds_total{sel}[{after_warmup}])")
    rss_now = by_target(base, f"process_resident_memory_bytes{sel}")
    rss_then = by_target(base, f"process_resident_memory_bytes{sel} offset {after_warmup}")
    out = {}
    for target in sorted(rss_now):
        then = rss_then.get(target)
        out[target] = {
            "cpu_percent": round(cpu.get(target, float("nan")) * 100, 2),
            "rss_mib": round(rss_now[target] / 2**20, 1),
            "rss_growth_percent": (round((rss_now[target] / then - 1) * 100, 2)
                                   if then else float("nan")),
        }
    return out


def fired_alerts(base: str, window: str) -> list[str]:
    found = query(base, f'count by (alertname) (count_over_time(ALERTS{{alertstate="firing"}}'
                        f"[{window}]))")
    return sorted(r["metric"]["alertname"] for r in found)


def soak(work: Path, minutes: float, warmup_minutes: float) -> dict[str, Any]:
    env, prom_port = stack_environment(work)
    base = f"http://127.0.0.1:{prom_port}"
    log_path = work / "up.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tunewatch", "up"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: bool(query(base, "up")), 180, "the stack's Prometheus")
        log.info("stack up; soaking for %.1f minutes (log: %s)", minutes, log_path)
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"tunewatch up exited with {proc.returncode}; see {log_path}")
            time.sleep(5)
        window = f"{int(minutes * 60)}s"
        after_warmup = f"{int((minutes - warmup_minutes) * 60)}s"
        return {"minutes": minutes, "warmup_minutes": warmup_minutes,
                "scrapes": scrape_figures(base, window),
                "processes": process_figures(base, after_warmup),
                "alerts_fired": fired_alerts(base, window)}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def verdict(figures: dict[str, Any]) -> list[str]:
    """Each missed target, in words (empty when all are met)."""
    misses = []
    for target, s in figures["scrapes"].items():
        if s["failed_scrapes"]:
            misses.append(f"{target}: {s['failed_scrapes']:g} failed scrapes")
    for target, p in figures["processes"].items():
        if not p["rss_growth_percent"] <= RSS_GROWTH_TARGET * 100:
            misses.append(f"{target}: RSS grew {p['rss_growth_percent']}% after warm-up")
    unexpected = sorted(set(figures["alerts_fired"]) - EXPECTED_ALERTS)
    if unexpected:
        misses.append(f"unexpected alerts fired: {', '.join(unexpected)}")
    return misses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float,
                        default=float(os.environ.get("SOAK_MINUTES", "10")),
                        help="how long the stack runs (default 10, or $SOAK_MINUTES)")
    parser.add_argument("--warmup-minutes", type=float, default=2.0,
                        help="excluded from the CPU and RSS-growth figures (default 2)")
    args = parser.parse_args(argv)
    if not 0 < args.warmup_minutes < args.minutes:
        parser.error("--warmup-minutes must be above 0 and below --minutes")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="tunewatch-soak-") as tmp:
        figures = soak(Path(tmp), args.minutes, args.warmup_minutes)
    print(json.dumps(figures, indent=2))
    misses = verdict(figures)
    for miss in misses:
        log.warning("target missed: %s", miss)
    if not misses:
        log.info("every target met: 0 failed scrapes, RSS growth under %d%%, only the demo's "
                 "alerts", RSS_GROWTH_TARGET * 100)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
