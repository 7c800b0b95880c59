"""The files collector: checkpoints and data queues on this host, and room left for them.

Why: the seeds decided when to generate more data by counting queued files, and the eval
host's view of training was whichever checkpoints had synced. Both are facts about files on
one host, measured here and nowhere else (DESIGN section 2), so that alerts can compare the
training host's newest checkpoint with the eval host's and page before a queue runs dry or
a disk fills.

    tunewatch_files_checkpoints 6
    tunewatch_files_checkpoint_newest_step 300
    tunewatch_files_checkpoint_newest_timestamp_seconds 1.7637e+09
    tunewatch_files_checkpoint_bytes 3.1e+06
    tunewatch_files_checkpoint_filesystem_free_bytes 4.2e+10
    tunewatch_files_queue_files{priority="high"} 12
    tunewatch_files_queue_bytes{priority="high"} 8.1e+06
    tunewatch_files_queue_newest_file_timestamp_seconds{priority="high"} 1.7637e+09
    tunewatch_files_queue_filesystem_free_bytes{priority="high"} 4.2e+10
    tunewatch_files_scan_errors_total{reason="not_found"} 0

Checkpoint directories (exporter.checkpoint_dirs) are taken together: a host has one
checkpoint root in practice, and the label dictionary has no path label (paths are
unbounded). Queue directories are labelled by their configured priority; two directories
with the same priority add up. A queued file is a regular, non-hidden file directly in the
directory whose name does not end in `.tmp` or `.partial` (writers rename finished files into
place). A missing directory publishes nothing for itself and is counted, never reported as 0.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from tunewatch.core.config import ExporterConfig, QueueDir

log = logging.getLogger("tunewatch.collectors.files")

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_SUFFIXES = (".tmp", ".partial")
SCAN_REASONS = ("not_found", "permission_denied", "not_a_directory", "io_error")


@dataclass
class DirStats:
    """Totals for one scanned directory (or several added together)."""

    files: int = 0
    bytes: int = 0
    newest_mtime: float | None = None
    free_bytes: int | None = None

    def add(self, other: DirStats) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.newest_mtime = _max(self.newest_mtime, other.newest_mtime)
        if other.free_bytes is not None:
            self.free_bytes = (other.free_bytes if self.free_bytes is None
                               else min(self.free_bytes, other.free_bytes))


@dataclass
class CheckpointStats(DirStats):
    newest_step: int | None = None
    newest_step_mtime: float | None = None

    def merge(self, other: CheckpointStats) -> None:
        """Add another checkpoint root: totals add up, the newest step wins."""
        self.add(other)
        if other.newest_step is not None and (self.newest_step is None
                                              or other.newest_step > self.newest_step):
            self.newest_step, self.newest_step_mtime = other.newest_step, other.newest_step_mtime


S = TypeVar("S", bound=DirStats)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _reason(exc: OSError) -> str:
    return {errno.ENOENT: "not_found", errno.EACCES: "permission_denied",
            errno.EPERM: "permission_denied", errno.ENOTDIR: "not_a_directory"}.get(
                exc.errno or 0, "io_error")


def _tree_bytes(path: str) -> int:
    """Bytes of the regular files under path; files vanishing mid-walk are skipped."""
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def scan_queue(path: str) -> DirStats:
    """Count the finished files directly in a queue directory (raises OSError if unusable)."""
    stats = DirStats(free_bytes=_free_bytes(path))
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith(PARTIAL_SUFFIXES):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # consumed between listing and stat
            stats.files += 1
            stats.bytes += st.st_size
            stats.newest_mtime = _max(stats.newest_mtime, st.st_mtime)
    return stats


def scan_checkpoints(path: str) -> CheckpointStats:
    """Find the checkpoint-<step> directories under a checkpoint root."""
    stats = CheckpointStats(free_bytes=_free_bytes(path))
    with os.scandir(path) as entries:
        for entry in entries:
            match = CHECKPOINT.match(entry.name)
            try:
                if match is None or not entry.is_dir(follow_symlinks=False):
                    continue
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue  # rotated away (save_total_limit) while we looked
            step = int(match.group(1))
            stats.files += 1
            stats.bytes += _tree_bytes(entry.path)
            stats.newest_mtime = _max(stats.newest_mtime, mtime)
            if stats.newest_step is None or step > stats.newest_step:
                stats.newest_step, stats.newest_step_mtime = step, mtime
    return stats


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class FilesCollector:
    """The `files` collector: scans on every scrape (directories hold tens of entries)."""

    name = "files"

    def __init__(self, checkpoint_dirs: list[str], queue_dirs: list[QueueDir]) -> None:
        self.checkpoint_dirs = checkpoint_dirs
        self.queue_dirs = queue_dirs
        self.errors = dict.fromkeys(SCAN_REASONS, 0)
        self._failing: set[str] = set()

    def close(self) -> None:
        """Nothing to release."""

    def collect(self) -> Iterator[Metric]:
        if self.checkpoint_dirs:
            yield from checkpoint_families(self._checkpoints())
        if self.queue_dirs:
            yield from queue_families(self._queues())
        yield self._error_family()

    def _checkpoints(self) -> CheckpointStats | None:
        total: CheckpointStats | None = None
        for path in self.checkpoint_dirs:
            stats = self._scan(path, scan_checkpoints)
            if stats is None:
                continue
            if total is None:
                total = stats
            else:
                total.merge(stats)
        return total

    def _queues(self) -> dict[str, DirStats]:
        out: dict[str, DirStats] = {}
        for queue in self.queue_dirs:
            stats = self._scan(queue.path, scan_queue)
            if stats is not None:
                out.setdefault(queue.priority, DirStats()).add(stats)
        return out

    def _scan(self, path: str, scan: Callable[[str], S]) -> S | None:
        try:
            stats = scan(path)
        except OSError as exc:
            reason = _reason(exc)
            self.errors[reason] += 1
            if path not in self._failing:
                log.warning("files: cannot scan %s: %s (%s)", path, exc.strerror, reason)
                self._failing.add(path)
            return None
        if path in self._failing:
            log.info("files: %s readable again", path)
            self._failing.discard(path)
        return stats

    def _error_family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "tunewatch_files_scan_errors",
            "Directory scans that failed, by reason (the log names the directory).",
            labels=["reason"])
        for reason, count in self.errors.items():
            family.add_metric([reason], count)
        return family


def checkpoint_families(stats: CheckpointStats | None) -> Iterable[Metric]:
    """Checkpoint figures; nothing at all when no checkpoint root could be read."""
    if stats is None:
        return []
    out: list[Metric] = []

    def gauge(name: str, doc: str, value: float | None) -> None:
        if value is not None:
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], float(value))
            out.append(family)

    gauge("tunewatch_files_checkpoints", "checkpoint-<step> directories present.", stats.files)
    gauge("tunewatch_files_checkpoint_bytes", "Bytes in all checkpoint directories.",
          stats.bytes)
    gauge("tunewatch_files_checkpoint_newest_step",
          "Step of the newest checkpoint-<step> directory.", stats.newest_step)
    gauge("tunewatch_files_checkpoint_newest_timestamp_seconds",
          "Modification time of the newest checkpoint directory, unix seconds.",
          stats.newest_step_mtime)
    gauge("tunewatch_files_checkpoint_filesystem_free_bytes",
          "Bytes free to unprivileged users on the checkpoint filesystem (the least, if "
          "several).", stats.free_bytes)
    return out


def queue_families(queues: dict[str, DirStats]) -> list[Metric]:
    """Per-priority queue figures; a priority whose directories are unreadable is absent."""
    lab = ["priority"]
    files = GaugeMetricFamily("tunewatch_files_queue_files", "Finished files queued.",
                              labels=lab)
    size = GaugeMetricFamily("tunewatch_files_queue_bytes", "Bytes of the queued files.",
                             labels=lab)
    newest = GaugeMetricFamily("tunewatch_files_queue_newest_file_timestamp_seconds",
                               "Modification time of the newest queued file, unix seconds "
                               "(absent when the queue is empty).", labels=lab)
    free = GaugeMetricFamily("tunewatch_files_queue_filesystem_free_bytes",
                             "Bytes free to unprivileged users on the queue's filesystem.",
                             labels=lab)
    for priority, stats in sorted(queues.items()):
        files.add_metric([priority], float(stats.files))
        size.add_metric([priority], float(stats.bytes))
        if stats.newest_mtime is not None:
            newest.add_metric([priority], stats.newest_mtime)
        if stats.free_bytes is not None:
            free.add_metric([priority], float(stats.free_bytes))
    return [f for f in (files, size, newest, free) if f.samples]


def create_collector(cfg: ExporterConfig) -> FilesCollector:
    """Factory the host exporter calls."""
    missing = [p for p in [*cfg.checkpoint_dirs, *(q.path for q in cfg.queue_dirs)]
               if not Path(p).exists()]
    if missing:
        log.warning("files: configured directories that do not exist (yet): %s",
                    ", ".join(missing))
    return FilesCollector(list(cfg.checkpoint_dirs), list(cfg.queue_dirs))
