"""Training metrics read from a trainer's status file: the collector behind the sidecar.

Why: the seeds' training daemon writes `status/training_status.json` and nothing could alert
on it, and a trainer that cannot be changed cannot run the PrometheusCallback. The sidecar
(`tunewatch training-sidecar`, which serves this collector with `start_sidecar`) reads that
file on every scrape and publishes the same series as the PrometheusCallback
(exporters.training.metrics), plus what only the daemon knows:

    tunewatch_training_batch{run="r1"} 3
    tunewatch_training_batches{run="r1"} 12
    tunewatch_training_current_file_info{file="batch_07.jsonl",run="r1"} 1
    tunewatch_training_status_file_errors_total{reason="parse_error",run="r1"} 1
    tunewatch_training_status_last_update_timestamp_seconds{run="r1"} 1.7e9
    tunewatch_training_queue_examples{priority="high",run="r1"} 450
    tunewatch_training_queue_malformed_lines{priority="high",run="r1"} 2

A missing file sets the state `unknown` and counts `missing` (once per disappearance); a
half-written or garbage version counts `parse_error` once and keeps the last good values;
no update (updated_at, else the file's mtime) for `training.stale_after_seconds` makes the
state `stale` unless it is completed or crashed. Queued JSONL files (training.queue_dirs)
are checked line by line (ChatML structure); malformed lines are counted per priority, and
logged per file with their line numbers when a file is first seen or changes.

Readiness: /-/ready answers 503 until the status file was read once (a missing or broken
file counts as read: the answer then says so), 200 after. `start_sidecar` reads it once
right after it starts listening, so a status file on a hung mount keeps the sidecar unready
rather than ready with nothing to say.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.labels import bounded_label_value
from exporters.server import MetricsServer, ServerStartError, start_for_section
from exporters.training.metrics import DEFAULT_MAX_LOGGED_METRICS, TrainingMetrics
from exporters.training.status import QueueFile, StatusError, parse_status, scan_queue_file
from tunewatch.core.config import QueueDir, TrainingConfig
from tunewatch.core.errors import UsageError

log = logging.getLogger("tunewatch.training.sidecar")

ERROR_REASONS = ("missing", "read_error", "parse_error", "not_an_object", "invalid_field")


class StatusFileCollector:
    """Reads the status file and the queue directories on each scrape."""

    def __init__(
        self,
        status_file: str | Path,
        *,
        queue_dirs: Sequence[QueueDir] = (),
        stale_after_seconds: float = 300.0,
        run: str | None = None,
        max_logged_metrics: int = DEFAULT_MAX_LOGGED_METRICS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(status_file)
        self.queue_dirs = list(queue_dirs)
        self.stale_after_seconds = stale_after_seconds
        self.clock = clock
        self.metrics = TrainingMetrics(run, clock=clock, max_logged_metrics=max_logged_metrics)
        self._read_once = threading.Event()
        self._lock = threading.Lock()
        self._errors = dict.fromkeys(ERROR_REASONS, 0)
        self._version: tuple[int, int, int] | None = None
        self._missing = False
        self._file_state = "unknown"
        self._last_update: float | None = None
        self._numbers: dict[str, float] = {}
        self._current_file: str | None = None
        self._queue_cache: dict[Path, tuple[tuple[int, int], QueueFile]] = {}

    # ------------------------------------------------------------------ status file

    def refresh(self) -> None:
        """Read the status file if it changed; update the metrics."""
        with self._lock:
            self._refresh_status()
            state = self._file_state
            if self._missing:
                state = "unknown"
            elif (state not in ("completed", "crashed") and self._last_update is not None
                  and self.clock() - self._last_update > self.stale_after_seconds):
                state = "stale"
            self.metrics.set_state(state)
        self._read_once.set()

    def ready(self) -> bool:
        """True once the status file was read (or found missing or broken) at least once."""
        return self._read_once.is_set()

    def _refresh_status(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if not self._missing:
                self._errors["missing"] += 1
                log.warning("status file %s is missing; training state unknown", self.path)
            self._missing = True
            self._version = None
            return
        except OSError as exc:
            self._read_failed("read_error", f"cannot stat it: {exc}", None)
            return
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        if version == self._version and not self._missing:
            return
        self._missing = False
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self._read_failed("read_error", f"cannot read it: {exc}", version)
            return
        try:
            status = parse_status(text)
        except StatusError as exc:
            self._read_failed(exc.reason, str(exc), version)
            return
        self._version = version
        if status.problems:
            self._errors["invalid_field"] += 1
            log.warning("status file %s: ignored field(s) %s", self.path,
                        "; ".join(status.problems))
        self._apply(status.numbers, status.texts, status.state, status.updated_at)
        self._last_update = status.updated_at if status.updated_at is not None else (
            st.st_mtime_ns / 1e9)

    def _read_failed(self, reason: str, message: str, version: tuple[int, int, int] | None
                     ) -> None:
        if version is not None and version == self._version:
            return
        self._version = version
        self._errors[reason] += 1
        log.warning("status file %s: %s; keeping the last good values", self.path, message)

    def _apply(self, numbers: dict[str, float], texts: dict[str, str],
               state: str | None, updated_at: float | None) -> None:
        new_step = numbers.get("step")
        self.metrics.update(
            step=new_step, max_steps=numbers.get("max_steps"), epoch=numbers.get("epoch"),
            loss=numbers.get("loss"), grad_norm=numbers.get("grad_norm"),
            learning_rate=numbers.get("learning_rate"), tokens=numbers.get("tokens_seen"),
            samples=numbers.get("samples_seen"), timestamp=updated_at,
            batch_size=numbers.get("batch_size"),
        )
        if "eval_loss" in numbers:
            self.metrics.evaluated({"eval_loss": numbers["eval_loss"]})
        self.metrics.set_model_size(numbers.get("model_parameters"),
                                    numbers.get("model_trainable_parameters"))
        info: dict[str, str] = {k: texts[k] for k in ("model", "dataset", "regime") if k in texts}
        if "run" in texts:
            info["run"] = texts["run"]
        if info:
            self.metrics.set_info(**info)
        for key in ("batch", "batches_total"):
            if key in numbers:
                self._numbers[key] = numbers[key]
        if "current_file" in texts:
            self._current_file = bounded_label_value(texts["current_file"])
        if state is not None:
            self._file_state = state
        elif self._file_state == "unknown":
            self._file_state = "training" if new_step is not None else "idle"

    # ------------------------------------------------------------------ queue files

    def _scan_queues(self) -> dict[str, list[int]]:
        """Per priority: [files, examples, malformed lines, files with malformed lines]."""
        totals: dict[str, list[int]] = {}
        seen: set[Path] = set()
        for queue in self.queue_dirs:
            row = totals.setdefault(queue.priority, [0, 0, 0, 0])
            directory = Path(queue.path)
            try:
                files = sorted(directory.glob("*.jsonl"))
            except OSError as exc:
                log.warning("queue directory %s: %s", directory, exc)
                continue
            for path in files:
                try:
                    st = path.stat()
                    key = (st.st_mtime_ns, st.st_size)
                    cached = self._queue_cache.get(path)
                    if cached is None or cached[0] != key:
                        counts = scan_queue_file(path)
                        self._queue_cache[path] = (key, counts)
                        if counts.malformed:
                            log.warning("queue file %s: %d malformed line(s) (not ChatML "
                                        "messages), e.g. line(s) %s", path, counts.malformed,
                                        ", ".join(map(str, counts.malformed_lines)))
                    else:
                        counts = cached[1]
                except OSError as exc:
                    log.warning("queue file %s: %s", path, exc)
                    continue
                seen.add(path)
                row[0] += 1
                row[1] += counts.examples
                row[2] += counts.malformed
                row[3] += 1 if counts.malformed else 0
        for path in set(self._queue_cache) - seen:
            del self._queue_cache[path]
        return totals

    # ------------------------------------------------------------------ exposition

    def collect(self) -> Iterator[Metric]:
        self.refresh()
        yield from self.metrics.collect()
        with self._lock:
            run = self.metrics.run
            errors = dict(self._errors)
            numbers = dict(self._numbers)
            current_file = self._current_file
            last_update = self._last_update
            queues = self._scan_queues()
        labels = ["run"]
        counter = CounterMetricFamily(
            "tunewatch_training_status_file_errors",
            "Status file problems: missing (once per disappearance), read_error, parse_error "
            "and not_an_object (once per file version), invalid_field (a version with "
            "ignored fields).", labels=["run", "reason"])
        for reason in ERROR_REASONS:
            counter.add_metric([run, reason], errors[reason])
        yield counter
        family = GaugeMetricFamily("tunewatch_training_status_last_update_timestamp_seconds",
                                   "Unix time of the last status update (updated_at, else the "
                                   "file's mtime).", labels=labels)
        if last_update is not None:
            family.add_metric([run], last_update)
        yield family
        for key, name, text in (
                ("batch", "tunewatch_training_batch", "Batch of the current file in progress."),
                ("batches_total", "tunewatch_training_batches",
                 "Batches of the current file in all.")):
            family = GaugeMetricFamily(name, text, labels=labels)
            if key in numbers:
                family.add_metric([run], numbers[key])
            yield family
        info = InfoMetricFamily("tunewatch_training_current_file",
                                "The data file the trainer is on.", labels=labels)
        if current_file is not None:
            info.add_metric([run], {"file": current_file})
        yield info
        for index, name, text in (
                (0, "tunewatch_training_queue_files", "Queued JSONL files."),
                (1, "tunewatch_training_queue_examples",
                 "Well-formed examples (ChatML lines) in the queued files."),
                (2, "tunewatch_training_queue_malformed_lines",
                 "Malformed lines in the queued files (the log names file and line)."),
                (3, "tunewatch_training_queue_malformed_files",
                 "Queued files with at least one malformed line.")):
            family = GaugeMetricFamily(name, text, labels=["run", "priority"])
            for priority, row in sorted(queues.items()):
                family.add_metric([run, priority], row[index])
            yield family

    def describe(self) -> list[Metric]:
        return []


# --------------------------------------------------------------------------- serving


def start_sidecar(collector: StatusFileCollector, section: TrainingConfig,
                  listen_address: str | None = None,
                  web_config_file: str | None = None) -> MetricsServer:
    """Serve `collector` with the training section's server settings (flags, when given,
    win), then read the status file once: /-/ready answers 503 until that read is done.

    A server that cannot listen (address in use, bad web config) is a UsageError.
    """
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server = start_for_section(registry, section, "tunewatch training sidecar",
                                   listen_address, web_config_file, ready=collector.ready)
    except ServerStartError as exc:
        raise UsageError(str(exc)) from exc
    collector.refresh()  # /-/ready stays 503 until this first read is done
    log.info("reading %s (stale after %.0f s); %d queue dir(s)", collector.path,
             collector.stale_after_seconds, len(collector.queue_dirs))
    return server
