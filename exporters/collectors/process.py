"""The process collector: the trainer's and evaluator's vital signs, read with psutil.

Why: node_exporter sees the host, not the run. When a trainer leaks host memory, spins in a
data loader, or dies, the team needs it per process and per rank, and needs to know which
run a process belongs to. Processes are chosen in the config (exporter.processes), each
found by a pid file, an exact process name or a command-line regular expression:

    tunewatch_process_up{process="trainer"} 1
    tunewatch_process_instances{process="trainer"} 2
    tunewatch_process_resident_memory_bytes{pid="4242",process="trainer"} 1.2e+09
    tunewatch_process_cpu_seconds_total{pid="4242",process="trainer"} 5123.4
    tunewatch_process_info{local_rank="0",pid="4242",process="trainer",rank="0",run="r7"} 1

Values carry only `process` (the configured name) and `pid`; the run and ranks, read from
the process environment (TUNEWATCH_RUN, RANK, LOCAL_RANK; see procenv.py), are on the
`_info` series so a query joins them when it needs them. Matches per target are capped
(exporter.process_max_matches) so a loose pattern cannot flood Prometheus.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.collectors.procenv import ENV_KEYS, run_labels

if TYPE_CHECKING:
    from tunewatch.core.config import ExporterConfig, ProcessTarget

log = logging.getLogger("tunewatch.collectors.process")

ERROR_REASONS = ("pid_file_unreadable", "pid_file_invalid", "access_denied",
                 "too_many_matches")


@dataclass
class Reading:
    """What one matched process looked like at this scrape."""

    pid: int
    rss_bytes: int
    cpu_seconds: float
    threads: int
    open_fds: int | None
    start_time: float
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Matcher:
    """One configured target and how to recognise its processes."""

    name: str
    pid_file: str = ""
    process_name: str = ""
    pattern: re.Pattern[str] | None = None

    @classmethod
    def from_config(cls, target: ProcessTarget) -> Matcher:
        pattern = re.compile(target.cmdline_pattern) if target.cmdline_pattern else None
        return cls(target.name, target.pid_file, target.process_name, pattern)

    def matches(self, proc: psutil.Process) -> bool:
        info = proc.info  # filled by process_iter(attrs=...)
        if self.process_name and info.get("name") == self.process_name:
            return True
        if self.pattern is not None:
            cmdline = " ".join(info.get("cmdline") or [])
            return bool(cmdline) and self.pattern.search(cmdline) is not None
        return False


class ProcessCollector:
    """The `process` collector; one psutil pass over the process table per scrape."""

    name = "process"

    def __init__(self, matchers: list[Matcher], max_matches: int) -> None:
        self.matchers = matchers
        self.max_matches = max_matches
        self.errors = {(m.name, r): 0 for m in matchers for r in ERROR_REASONS}

    def close(self) -> None:
        """Nothing to release."""

    def collect(self) -> Iterator[Metric]:
        found = self._find()
        readings = {name: self._read_all(name, procs) for name, procs in found.items()}
        yield from families(readings)
        yield self._error_family()

    # -- finding

    def _find(self) -> dict[str, list[psutil.Process]]:
        found: dict[str, list[psutil.Process]] = {m.name: [] for m in self.matchers}
        by_pattern = [m for m in self.matchers if not m.pid_file]
        if by_pattern:
            for proc in psutil.process_iter(attrs=["name", "cmdline"]):
                for matcher in by_pattern:
                    if matcher.matches(proc):
                        found[matcher.name].append(proc)
        for matcher in self.matchers:
            if matcher.pid_file:
                found[matcher.name] = self._from_pid_file(matcher)
        for name, procs in found.items():
            if len(procs) > self.max_matches:
                self._error(name, "too_many_matches",
                            f"{len(procs)} processes match, keeping {self.max_matches}")
                found[name] = sorted(procs, key=lambda p: p.pid)[: self.max_matches]
        return found

    def _from_pid_file(self, matcher: Matcher) -> list[psutil.Process]:
        path = Path(matcher.pid_file)
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return []  # not running (or not yet): up 0, not an error
        except (OSError, UnicodeDecodeError) as exc:
            self._error(matcher.name, "pid_file_unreadable", f"{path}: {exc}")
            return []
        if not text.isdigit():
            self._error(matcher.name, "pid_file_invalid", f"{path}: not a pid: {text[:40]!r}")
            return []
        try:
            return [psutil.Process(int(text))]
        except psutil.NoSuchProcess:
            return []

    # -- reading

    def _read_all(self, name: str, procs: list[psutil.Process]) -> list[Reading]:
        out = []
        for proc in procs:
            reading = self._read(name, proc)
            if reading is not None:
                out.append(reading)
        return out

    def _read(self, name: str, proc: psutil.Process) -> Reading | None:
        try:
            with proc.oneshot():
                cpu = proc.cpu_times()
                reading = Reading(
                    pid=proc.pid,
                    rss_bytes=proc.memory_info().rss,
                    cpu_seconds=cpu.user + cpu.system,
                    threads=proc.num_threads(),
                    open_fds=_open_fds(proc),
                    start_time=proc.create_time(),
                )
        except psutil.NoSuchProcess:
            return None  # exited between listing and reading
        except psutil.AccessDenied as exc:
            self._error(name, "access_denied", f"pid {proc.pid}: {exc}")
            return None
        reading.env = self._environment(name, proc)
        return reading

    def _environment(self, name: str, proc: psutil.Process) -> dict[str, str]:
        try:
            return run_labels(proc)
        except psutil.NoSuchProcess:
            return {}
        except psutil.AccessDenied:
            self._error(name, "access_denied", f"pid {proc.pid}: environment not readable")
            return {}

    def _error(self, name: str, reason: str, message: str) -> None:
        if self.errors[(name, reason)] == 0:
            log.warning("process %s: %s (%s); counted in tunewatch_process_errors_total",
                        name, message, reason)
        self.errors[(name, reason)] += 1

    def _error_family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "tunewatch_process_errors",
            "Problems finding or reading a configured process, by reason.",
            labels=["process", "reason"])
        for (name, reason), count in self.errors.items():
            family.add_metric([name, reason], count)
        return family


def _open_fds(proc: psutil.Process) -> int | None:
    try:
        return proc.num_fds()
    except (AttributeError, psutil.AccessDenied):
        return None  # not on this platform, or not ours to see: omitted, not 0


def families(readings: dict[str, list[Reading]]) -> list[Metric]:
    """Turn one scrape's readings into metric families (pure: tested directly)."""
    up = GaugeMetricFamily("tunewatch_process_up",
                           "1 if at least one process of this configured name runs.",
                           labels=["process"])
    count = GaugeMetricFamily("tunewatch_process_instances",
                              "Processes matching this configured name (capped).",
                              labels=["process"])
    per = ["process", "pid"]
    rss = GaugeMetricFamily("tunewatch_process_resident_memory_bytes",
                            "Resident set size.", labels=per)
    cpu = CounterMetricFamily("tunewatch_process_cpu_seconds",
                              "User plus system CPU time of the process.", labels=per)
    threads = GaugeMetricFamily("tunewatch_process_threads", "Threads.", labels=per)
    fds = GaugeMetricFamily("tunewatch_process_open_fds", "Open file descriptors.", labels=per)
    start = GaugeMetricFamily("tunewatch_process_start_time_seconds",
                              "Start time of the process, unix seconds.", labels=per)
    info = GaugeMetricFamily("tunewatch_process_info",
                             "Run and ranks of the process, from its environment "
                             "(TUNEWATCH_RUN, RANK, LOCAL_RANK; empty when unset).",
                             labels=[*per, "run", "rank", "local_rank"])
    for name, procs in readings.items():
        up.add_metric([name], 1.0 if procs else 0.0)
        count.add_metric([name], float(len(procs)))
        for r in procs:
            ids = [name, str(r.pid)]
            rss.add_metric(ids, float(r.rss_bytes))
            cpu.add_metric(ids, r.cpu_seconds)
            threads.add_metric(ids, float(r.threads))
            if r.open_fds is not None:
                fds.add_metric(ids, float(r.open_fds))
            start.add_metric(ids, r.start_time)
            info.add_metric([*ids, *(r.env.get(k, "") for k in ENV_KEYS)], 1.0)
    return [f for f in (up, count, rss, cpu, threads, fds, start, info) if f.samples]


def create_collector(cfg: ExporterConfig) -> ProcessCollector:
    """Factory the host exporter calls."""
    matchers = [Matcher.from_config(t) for t in cfg.processes]
    if not matchers:
        log.info("process collector: no processes configured (exporter.processes)")
    log.debug("process collector follows %s (own pid %d)", [m.name for m in matchers],
              os.getpid())
    return ProcessCollector(matchers, cfg.process_max_matches)
