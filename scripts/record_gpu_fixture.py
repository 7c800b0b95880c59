#!/usr/bin/env python3
"""Record a golden GPU fixture on a machine with a real GPU.

Why: the tests feed recorded readings into the GPU collector; readings recorded on real
boards (an H100, the seeds' RTX 4090 and 3090) are what keep those tests honest. This runs
the real collector (NvmlReader through GpuCollector), and writes into --out:

  readings.json   the raw readings in the RecordedReader format (tests/fixtures/gpu/),
                  ready to copy there and to serve with TUNEWATCH_EXPORTER__GPU_READINGS_FILE=...;
  exposition.prom the last scrape's text exposition;
  latency.json    NVML read and full scrape latency (min, p50, p95, max seconds);
  promtool.txt    `promtool check metrics` on the exposition (when promtool is installed).

Usage: python scripts/record_gpu_fixture.py --out var/gpu-fixture --scrapes 20
(`--from-recording PATH` replays a recording instead of NVML: a dry run of this script.)
Exit status: 0 recorded, 2 NVML unavailable (the reason is printed), 3 promtool complained.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from exporters.collectors.gpu.collector import GpuCollector  # noqa: E402
from exporters.collectors.gpu.nvml import NvmlReader  # noqa: E402
from exporters.collectors.gpu.readings import GpuReader, GpuUnavailable  # noqa: E402
from exporters.collectors.gpu.recorded import RecordedReader, snapshot_to_dict  # noqa: E402

log = logging.getLogger("record_gpu_fixture")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", type=Path, default=REPO / "var" / "gpu-fixture")
    parser.add_argument("--scrapes", type=int, default=20, help="scrapes to time")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between scrapes")
    parser.add_argument("--max-processes", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=4.0, help="NVML read deadline, s")
    parser.add_argument("--from-recording", type=Path, default=None,
                        help="dry run: replay this recording instead of reading NVML")
    return parser.parse_args(argv)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"min": ordered[0], "p50": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max": ordered[-1], "count": len(ordered)}


def timed_reads(reader: GpuReader, count: int) -> tuple[list[dict[str, Any]], list[float]]:
    """Read `count` times; raises GpuUnavailable when NVML cannot be used."""
    snapshots, seconds = [], []
    for _ in range(count):
        started = time.perf_counter()
        snapshot = reader.read()
        seconds.append(time.perf_counter() - started)
        snapshots.append(snapshot_to_dict(snapshot))
    return snapshots, seconds


def timed_scrapes(collector: GpuCollector, count: int, interval: float,
                  reader: GpuReader) -> tuple[str, list[float], list[dict[str, int]]]:
    """Scrape like Prometheus would, sampling memory between scrapes for the recording."""
    registry = CollectorRegistry()
    registry.register(collector)
    text, seconds, samples = "", [], []
    for _ in range(count):
        started = time.perf_counter()
        text = generate_latest(registry).decode()
        seconds.append(time.perf_counter() - started)
        samples.append({str(k): v for k, v in reader.sample_memory().items()})
        time.sleep(interval)
    return text, seconds, samples


def promtool_check(text: str, out: Path) -> bool:
    if shutil.which("promtool") is None:
        log.warning("promtool not installed: exposition not linted")
        return True
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, check=False)
    (out / "promtool.txt").write_text(done.stdout + done.stderr, encoding="utf-8")
    return done.returncode == 0 and not (done.stdout + done.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    reader: GpuReader = (RecordedReader.from_file(args.from_recording)
                         if args.from_recording else NvmlReader())
    try:
        snapshots, read_seconds = timed_reads(reader, 3)
    except GpuUnavailable as err:
        log.error("NVML unavailable: %s", err.reason)
        return 2
    collector = GpuCollector(reader, max_processes=args.max_processes,
                             read_timeout_seconds=args.timeout)
    try:
        text, scrape_seconds, samples = timed_scrapes(collector, args.scrapes, args.interval,
                                                      reader)
    finally:
        collector.close()
    gpus = ", ".join(g["name"] for g in snapshots[-1]["gpus"]) or "no GPU"
    recording = {
        "comment": f"Recorded by scripts/record_gpu_fixture.py on {platform.node()} "
                   f"({gpus}, driver {snapshots[-1]['driver_version']}) at "
                   f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}.",
        "snapshots": snapshots,
        "memory_samples": samples,
    }
    (args.out / "readings.json").write_text(json.dumps(recording, indent=2) + "\n",
                                            encoding="utf-8")
    (args.out / "exposition.prom").write_text(text, encoding="utf-8")
    latency = {"nvml_read_seconds": summary(read_seconds),
               "scrape_seconds": summary(scrape_seconds)}
    (args.out / "latency.json").write_text(json.dumps(latency, indent=2) + "\n",
                                           encoding="utf-8")
    log.info("recorded %s into %s; scrape p50 %.4fs, max %.4fs", gpus, args.out,
             latency["scrape_seconds"]["p50"], latency["scrape_seconds"]["max"])
    if not promtool_check(text, args.out):
        log.error("promtool check metrics complained: see %s", args.out / "promtool.txt")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
