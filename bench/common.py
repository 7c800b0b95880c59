"""What the benchmarks share: scraping as Prometheus does, starting tunewatch, the figures.

Why one module: every benchmark that scrapes, starts a tunewatch server, needs a checkpoint
or reports latency must do it the same way, or their figures cannot be compared. The tests'
service helpers (tests/services.py: `free_port`, `wait_for`, a real Prometheus) are shared
with the tests rather than copied here.

Scraping. A benchmark that scrapes differently from Prometheus measures a path production
never takes. Prometheus asks for OpenMetrics first and for gzip, over a keep-alive
connection, and says its timeout in `X-Prometheus-Scrape-Timeout-Seconds`; a scraper without
those headers was once served by a different (five times slower) encoder than every real
Prometheus. Every timed scrape in bench/ goes through `Scraper`, which sends exactly the
headers of `exporters.exposition.prometheus_scrape_headers` (the tests check them against
the real binary) and decompresses the answer, inside the timing, as Prometheus does.

    scraper = Scraper("127.0.0.1", 9945)
    result = scraper.scrape()          # result.seconds, result.body (decompressed), ...
    scraper.close()

The command line. Every benchmark takes the same `--json` (what `make bench` and the tests
read) from `bench_parser` and prints its figures through `write_figures`; those timed around
a checkpoint also take its `--checkpoint`/`--data` pair and work in `checkpoint_workdir` (a
temporary directory, with the tiny model trained there when no checkpoint is given; see
bench_evaluator.py's `main`).

The rest: `start_tunewatch` (a server process, returned once it answers) and `stop_process`,
`replicate_readings` (recorded GPU readings scaled to N boards), `quick_checkpoint` /
`given_or_quick` (a briefly trained tiny model when no checkpoint is given), `percentiles` and
`cpu_seconds`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from exporters.exposition import prometheus_scrape_headers
from tunewatch.demo.tinymodel import build_tiny_run

REPO = Path(__file__).resolve().parent.parent
GPU_FIXTURE = REPO / "tests" / "fixtures" / "gpu" / "h100-load.json"

# Prometheus's default scrape_timeout; the value of the timeout header the benchmarks send.
SCRAPE_TIMEOUT_SECONDS = 10.0


@dataclass
class Scrape:
    """One scrape's answer: the body decompressed, and the seconds it took end to end."""

    status: int
    seconds: float
    body: bytes
    content_type: str
    content_encoding: str

    def series(self) -> int:
        """Sample lines in the body (what Prometheus would ingest)."""
        return sum(1 for line in self.body.splitlines() if line and not line.startswith(b"#"))

    def samples(self) -> dict[str, float]:
        """`name{labels}` -> value of every sample line (text format)."""
        out = {}
        for line in self.body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


class Scraper:
    """One target over one keep-alive connection, with Prometheus's request headers: the
    Accept header Prometheus sends (openmetrics-text first, then text/plain 0.0.4;
    exporters.exposition.PROMETHEUS_ACCEPT) and Accept-Encoding gzip.

    A connection the server closed while idle is replaced, as Prometheus's Go client does;
    any other failure (refused, reset, timed out) raises and drops the connection, and the
    next call connects anew, so a caller can count the failure and carry on.
    """

    def __init__(self, host: str, port: int, path: str = "/metrics",
                 timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS) -> None:
        self.host, self.port, self.path = host, port, path
        self.timeout_seconds = timeout_seconds
        self.headers = prometheus_scrape_headers(timeout_seconds)
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def for_url(cls, url: str, timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS) -> Scraper:
        """`http://host:port[/path]`; the path defaults to /metrics."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80,
                   parts.path if parts.path not in ("", "/") else "/metrics", timeout_seconds)

    def scrape(self) -> Scrape:
        reused = self._conn is not None
        try:
            return self._request()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server closed the idle keep-alive connection (after its request timeout);
            # Go's HTTP transport, Prometheus's, sends the request again on a new one.
            return self._request()

    def _request(self) -> Scrape:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port,
                                                    timeout=self.timeout_seconds)
        start = time.perf_counter()
        try:
            self._conn.request("GET", self.path, headers=self.headers)
            resp = self._conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        encoding = resp.getheader("Content-Encoding", "")
        body = zlib.decompress(raw, wbits=31) if encoding == "gzip" else raw
        seconds = time.perf_counter() - start
        return Scrape(resp.status, seconds, body, resp.getheader("Content-Type", ""), encoding)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Scraper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scrape_once(url: str, timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS) -> Scrape:
    """One scrape of `url` on a connection of its own (polling; nothing timed)."""
    with Scraper.for_url(url, timeout_seconds) as scraper:
        return scraper.scrape()


# --------------------------------------------------------------------------- processes


def start_tunewatch(args: list[str], port: int, workdir: Path, env: dict[str, str],
                    timeout: float = 120.0) -> subprocess.Popen[bytes]:
    """`tunewatch ARGS` on 127.0.0.1:PORT, its output in workdir/<command>.log; returns once
    /-/healthy answers (the benchmarks share this start-up)."""
    log_path = workdir / f"{args[0]}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunewatch", *args, "--web.listen-address", f"127.0.0.1:{port}"],
        env={**os.environ, "TUNEWATCH_LOG_LEVEL": "warning", **env}, cwd=workdir,
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{args[0]} exited:\n{log_path.read_text()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/-/healthy")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{args[0]} did not answer within {timeout:g} s:\n{log_path.read_text()}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Terminate a server process; kill it when it has not exited within `timeout` seconds
    (a benchmark must not leave a process behind, nor hang on one)."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads, not its children)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# --------------------------------------------------------------------------- inputs


def replicate_readings(gpus: int, out: Path) -> Path:
    """The recorded H100 snapshot with `gpus` boards (distinct index and UUID each), written
    to out/readings.json for `TUNEWATCH_EXPORTER__GPU_READINGS_FILE`."""
    data = json.loads(GPU_FIXTURE.read_text())
    snapshot = data["snapshots"][0]
    board = snapshot["gpus"][0]
    snapshot["gpus"] = [{**board, "index": i, "uuid": f"GPU-bench-{i:04d}"}
                        for i in range(gpus)]
    data["snapshots"] = [snapshot]
    path = out / "readings.json"
    path.write_text(json.dumps(data))
    return path


def quick_checkpoint(workdir: Path, steps: int = 50,
                     require_learning: bool = False) -> tuple[Path, Path]:
    """(checkpoint, suite directory) of the tiny model trained `steps` steps under workdir,
    for benchmarks that time machinery around a checkpoint rather than what it learnt.

    The Trainer prints its log lines on stdout; a benchmark's stdout is its result (--json),
    so they go to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        run = build_tiny_run(workdir, max_steps=steps, save_steps=steps,
                             require_learning=require_learning)
    return run.checkpoints[-1], run.data_dir


def given_or_quick(checkpoint: Path | None, data: Path | None,
                   workdir: Path) -> tuple[Path, Path]:
    """A benchmark's --checkpoint and --data when both are given, else a quick checkpoint
    trained under `workdir` (and its suite)."""
    if checkpoint is not None and data is not None:
        return checkpoint, data
    return quick_checkpoint(workdir / "tiny")


# --------------------------------------------------------------------------- command line


def bench_parser(doc: str, checkpoint: bool = False) -> argparse.ArgumentParser:
    """A benchmark's parser: described by its docstring's first line, with `--json`, and with
    `checkpoint` the `--checkpoint`/`--data` pair that `checkpoint_workdir` reads."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if checkpoint:
        parser.add_argument("--checkpoint", type=Path, default=None,
                            help="a checkpoint to use (default: train a tiny model)")
        parser.add_argument("--data", type=Path, default=None, help="its validation suite")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


@contextlib.contextmanager
def checkpoint_workdir(args: argparse.Namespace,
                       prefix: str) -> Iterator[tuple[Path, Path, Path]]:
    """(work directory, checkpoint, suite directory): a temporary directory named `prefix...`,
    removed afterwards, and `given_or_quick` of the parsed --checkpoint and --data in it."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        checkpoint, data = given_or_quick(args.checkpoint, args.data, work)
        yield work, checkpoint, data


def write_figures(figures: Any, as_json: bool, as_text: Callable[[Any], str],
                  indent: int | None = None) -> None:
    """A benchmark's result on stdout: its figures as one JSON document (--json: what the
    tests and scripts read) or as `as_text(figures)` for a person."""
    sys.stdout.write(json.dumps(figures, indent=indent) + "\n" if as_json else as_text(figures))


# --------------------------------------------------------------------------- figures


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    """p50, p99 and max in milliseconds of sorted latencies (each None when there are none)."""
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
            "max_ms": round(latencies[-1] * 1000, 2)}
