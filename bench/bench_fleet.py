"""Benchmark: a simulated fleet (64 nodes x 8 GPUs by default) scraped by a real Prometheus.

Why simulated: nobody has 64 GPU nodes for a test, but what Prometheus pays for a fleet
depends only on what it scrapes: how many targets, how many series, how big each body is.
So the real expositions of our processes (recorded in tests/fixtures/fleet/ by `--record`:
the host exporter on recorded H100 readings, the training sidecar, the evaluator with three
evaluated checkpoints, node_exporter) are served from one small asyncio process listening
on 4 loopback ports per host, GPU UUIDs made unique per node. The targets file comes from
scripts/fleet_targets.py (the same generator a real fleet uses), and a real Prometheus
scrapes it all. Reported: targets up, head series, samples per scrape, scrape duration
(mean, p99, max over targets), Prometheus resident memory and CPU.

    python bench/bench_fleet.py                       # 64 x 8, 15 s interval, 90 s
    python bench/bench_fleet.py --smoke               # 4 x 2, 1 s interval, 6 s (a test)
    python bench/bench_fleet.py --record              # re-record tests/fixtures/fleet/

Exit status 1 when a target was not up at the end (full run only).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))
from common import (  # noqa: E402
    bench_parser,
    replicate_readings,
    scrape_once,
    stop_process,
    write_figures,
)
from fleet_targets import PORTS, fleet_groups  # noqa: E402
from services import free_port  # noqa: E402

SAMPLES = REPO / "tests" / "fixtures" / "fleet"
JOB_FILE = {"tunewatch-exporter": "exporter", "tunewatch-training": "training",
            "tunewatch-evaluator": "evaluator", "node": "node"}
log = logging.getLogger("bench_fleet")


# ---------------------------------------------------------------------- bodies


def node_body(job: str, node: int, gpus: int) -> bytes:
    """The recorded exposition of `job` as node `node` with `gpus` GPUs would serve it."""
    text = (SAMPLES / f"{JOB_FILE[job]}.txt").read_text(encoding="utf-8")
    if job == "tunewatch-exporter":
        keep = []
        for line in text.splitlines():
            m = re.search(r'\bgpu="(\d+)"', line)
            if m is None or int(m.group(1)) < gpus:
                keep.append(line)
        text = "\n".join(keep) + "\n"
        text = text.replace('uuid="GPU-bench-', f'uuid="GPU-n{node:04d}-')
    return text.encode()


class FleetServer:
    """One asyncio loop (in a thread) answering GET /metrics on many loopback ports."""

    def __init__(self, bodies: dict[int, bytes]) -> None:
        self.bodies = bodies
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.requests = 0
        self.thread = threading.Thread(target=self._run, name="fleet-server", daemon=True)

    async def _handle(self, port: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                body = self.bodies[port]
                self.requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; "
                             b"charset=utf-8\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _serve(self) -> None:
        for port in self.bodies:
            await asyncio.start_server(
                lambda r, w, p=port: self._handle(p, r, w), "127.0.0.1", port, backlog=64)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(); the thread ends
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(30)
        if self.error is not None:
            raise SystemExit(f"fleet server cannot listen: {self.error}")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def free_port_block(count: int) -> int:
    """A base port with `count` consecutive ports free on 127.0.0.1 right now."""
    for base in range(21000, 60000, count + 7):
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit(f"no block of {count} free ports")


# ---------------------------------------------------------------------- Prometheus


class Prom:
    """A real Prometheus reading the generated file_sd targets."""

    def __init__(self, workdir: Path, targets: Path, interval: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [
                {"job_name": "prometheus",
                 "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]},
                *({"job_name": job, "honor_labels": job != "node",
                   "file_sd_configs": [{"files": [str(targets / job / "*.yml")]}]}
                  for job in PORTS),
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("prometheus")
        if binary is None:
            raise SystemExit("prometheus not found on PATH (Debian package prometheus)")
        self.log_path = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, cwd=workdir)
        self._wait(lambda: self._get("/-/ready")[0] == 200, 60, "prometheus to be ready")

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, resp.read()
        except OSError:
            return 0, b""

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"prometheus exited:\n{self.log_path.read_text()[-2000:]}")
            if predicate():
                return
            time.sleep(0.25)
        raise SystemExit(f"timed out waiting for {what}")

    def value(self, promql: str) -> float | None:
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        result = json.loads(body)["data"]["result"] if status == 200 else []
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop_process(self.proc, 15)


# ---------------------------------------------------------------------- the run


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    eval_hosts = 1
    hosts = args.nodes + eval_hosts
    base = free_port_block(4 * hosts)
    groups = fleet_groups("fleet-bench", args.nodes, args.gpus, eval_hosts=eval_hosts,
                          loopback_base=base)
    bodies: dict[int, bytes] = {}
    for job, job_groups in groups.items():
        for n, group in enumerate(job_groups):
            port = int(group["targets"][0].rsplit(":", 1)[1])
            node = (port - base) // 4
            bodies[port] = node_body(job, node, args.gpus)
            assert n >= 0
    targets_dir = workdir / "targets"
    for job, job_groups in groups.items():
        (targets_dir / job).mkdir(parents=True, exist_ok=True)
        (targets_dir / job / "fleet.yml").write_text(yaml.safe_dump(job_groups))
    server = FleetServer(bodies)
    server.start()
    prom = Prom(workdir, targets_dir, args.interval)
    try:
        n_targets = len(bodies)
        prom._wait(lambda: prom.value('count(up{job!="prometheus"} == 1)') == n_targets,
                   max(60.0, 6 * _seconds(args.interval)), f"all {n_targets} targets up")
        started = time.monotonic()
        time.sleep(args.seconds)
        window = f"{max(int(args.seconds), 2 * int(_seconds(args.interval)))}s"
        sel = '{job!="prometheus"}'
        figures = {
            "nodes": args.nodes, "gpus_per_node": args.gpus, "eval_hosts": eval_hosts,
            "targets": n_targets, "scrape_interval": args.interval,
            "seconds": round(time.monotonic() - started, 1),
            "targets_up": prom.value(f"count(up{sel} == 1)"),
            "head_series": prom.value("prometheus_tsdb_head_series"),
            "samples_per_round": prom.value(f"sum(scrape_samples_scraped{sel})"),
            "body_bytes_per_round": sum(len(b) for b in bodies.values()),
            "scrape_duration_mean_ms": _ms(prom.value(
                f"avg(avg_over_time(scrape_duration_seconds{sel}[{window}]))")),
            "scrape_duration_p99_ms": _ms(prom.value(
                f"quantile(0.99, max_over_time(scrape_duration_seconds{sel}[{window}]))")),
            "scrape_duration_max_ms": _ms(prom.value(
                f"max(max_over_time(scrape_duration_seconds{sel}[{window}]))")),
            "prometheus_rss_mib": _mib(prom.value(
                'process_resident_memory_bytes{job="prometheus"}')),
            "prometheus_heap_inuse_mib": _mib(prom.value(
                'go_memstats_heap_inuse_bytes{job="prometheus"}')),
            "prometheus_cpu_cores": _round(prom.value(
                f'rate(process_cpu_seconds_total{{job="prometheus"}}[{window}])')),
            "fleet_server_requests": server.requests,
        }
    finally:
        prom.stop()
        server.stop()
    return figures


def _seconds(interval: str) -> float:
    return float(interval[:-1]) * (60 if interval.endswith("m") else 1)


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


def _mib(v: float | None) -> float | None:
    return None if v is None else round(v / 2**20, 1)


def as_text(f: dict[str, Any]) -> str:
    return (
        f"fleet: {f['nodes']} nodes x {f['gpus_per_node']} GPUs + {f['eval_hosts']} eval "
        f"host, {f['targets']} targets every {f['scrape_interval']} for {f['seconds']} s\n"
        f"  targets up {f['targets_up']:.0f}/{f['targets']}, head series "
        f"{f['head_series']:.0f}, samples per round {f['samples_per_round']:.0f} "
        f"({f['body_bytes_per_round'] / 2**20:.1f} MiB of text)\n"
        f"  scrape duration: mean {f['scrape_duration_mean_ms']} ms, p99 "
        f"{f['scrape_duration_p99_ms']} ms, max {f['scrape_duration_max_ms']} ms\n"
        f"  prometheus: RSS {f['prometheus_rss_mib']} MiB, heap in use "
        f"{f['prometheus_heap_inuse_mib']} MiB, CPU {f['prometheus_cpu_cores']} cores\n")


# ---------------------------------------------------------------------- recording


def record(out: Path, gpus: int = 8) -> None:
    """Scrape the real processes once and store their expositions under `out`.

    The evaluator serves the measurement kept in tests/fixtures/fleet/evaluator_state.json
    (three evaluated checkpoints of the tiny model), so no evaluation runs here.
    """
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleet-record-") as tmp:
        work = Path(tmp)
        status = work / "training_status.json"
        status.write_text(json.dumps({"state": "training", "step": 1200, "max_steps": 5000,
                                      "epoch": 0.4, "loss": 1.31, "learning_rate": 2e-5,
                                      "grad_norm": 0.8, "tokens_seen": 9.8e6,
                                      "samples_seen": 38400, "updated_at": time.time(),
                                      "model": "Qwen3-8B", "dataset": "sft-mix"}))
        state_dir = work / "state"
        state_dir.mkdir()
        shutil.copy(SAMPLES / "evaluator_state.json", state_dir / "state.json")
        (work / "checkpoints").mkdir()
        readings = replicate_readings(gpus, work)
        specs = {
            "exporter": (["exporter", "--no-collector.files"],
                         {"TUNEWATCH_EXPORTER__GPU_READINGS_FILE": str(readings)}),
            "training": (["training-sidecar", "--status-file", str(status)], {}),
            "evaluator": (["evaluate", "--checkpoints", str(work / "checkpoints"),
                           "--data", str(work), "--state-dir", str(state_dir)], {}),
        }
        env0 = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
        for name, (targs, env) in specs.items():
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "tunewatch", *targs, "--web.listen-address",
                 f"127.0.0.1:{port}"], env={**env0, "TUNEWATCH_RUN": "fleet-sample", **env},
                cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                (out / f"{name}.txt").write_bytes(_scrape_when_up(port, proc))
            finally:
                proc.terminate()
                proc.wait(15)
        binary = shutil.which("prometheus-node-exporter")
        if binary:
            port = free_port()
            proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                (out / "node.txt").write_bytes(_scrape_when_up(port, proc))
            finally:
                proc.terminate()
                proc.wait(15)
    log.info("recorded %s", ", ".join(sorted(p.name for p in out.glob("*.txt"))))


def _scrape_when_up(port: int, proc: subprocess.Popen[bytes]) -> bytes:
    """The exposition as Prometheus receives it (its headers; decompressed)."""
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            scrape_once(url, timeout_seconds=5.0)
            time.sleep(0.5)  # let a first scan finish, then take the real one
            result = scrape_once(url, timeout_seconds=5.0)
        except (OSError, http.client.HTTPException):
            time.sleep(0.2)
            continue
        if result.status == 200:
            return result.body
        time.sleep(0.2)
    raise SystemExit(f"nothing answered on 127.0.0.1:{port}")


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--smoke", action="store_true", help="4 nodes x 2 GPUs, 1s, 6 s")
    parser.add_argument("--nodes", type=int, default=None, help="default 64 (smoke 4)")
    parser.add_argument("--gpus", type=int, default=None, help="default 8 (smoke 2), max 8")
    parser.add_argument("--interval", default=None, help="scrape interval (default 15s)")
    parser.add_argument("--seconds", type=float, default=None, help="default 90 (smoke 6)")
    parser.add_argument("--record", action="store_true",
                        help="re-record tests/fixtures/fleet/*.txt from the real processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.record:
        record(SAMPLES)
        return 0
    args.nodes = args.nodes or (4 if args.smoke else 64)
    args.gpus = min(8, args.gpus or (2 if args.smoke else 8))
    args.interval = args.interval or ("1s" if args.smoke else "15s")
    args.seconds = args.seconds or (6.0 if args.smoke else 90.0)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        figures = measure(args, Path(tmp))
    write_figures(figures, args.json, as_text, indent=2)
    if figures["targets_up"] != figures["targets"] and not args.smoke:
        log.error("only %s of %s targets up", figures["targets_up"], figures["targets"])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
