"""The GPU collector: NVML readings as `tunewatch_gpu_*` metric families, collected on scrape.

Why this shape: a GPU host's exporter must keep answering when NVML does not (no driver, a
driver reload, a lost GPU, a call that never returns). So every read runs in a worker with a
deadline, one GPU's failure is reported beside the GPUs that still answer, and a missing
NVML is a state the collector reports, not an exception. Readings come from a `GpuReader`
(see nvml_reader.py); turning them into metric families is the pure function
`snapshot_families`, tested against recorded H100 and consumer-GPU readings.

Exposition (abridged, one H100):

    tunewatch_gpu_nvml_up 1
    tunewatch_gpu_info{cuda_version="13.1",driver_version="590.48.01",gpu="0",
                       name="NVIDIA H100 80GB HBM3",uuid="GPU-..."} 1
    tunewatch_gpu_up{gpu="0",uuid="GPU-..."} 1
    tunewatch_gpu_utilization_ratio{gpu="0",uuid="GPU-..."} 1.0
    tunewatch_gpu_memory_used_bytes{gpu="0",uuid="GPU-..."} 2.0780679168e+10
    tunewatch_gpu_memory_used_peak_bytes{gpu="0",uuid="GPU-..."} 2.1e+10
    tunewatch_gpu_power_watts{gpu="0",uuid="GPU-..."} 631.95
    tunewatch_gpu_energy_joules_total{gpu="0",uuid="GPU-..."} 1.2e+08
    tunewatch_gpu_throttle_reason_active{gpu="0",reason="sw_power_cap",uuid="GPU-..."} 0
    tunewatch_gpu_process_memory_used_bytes{gpu="0",local_rank="0",pid="11345",
        process="gpu_burn",rank="0",run="burn",uuid="GPU-..."} 1.645215744e+10
    tunewatch_gpu_xid_errors_total{gpu="0",uuid="GPU-...",xid="79"} 1

Without NVML (no driver, no library, or a read past its deadline) the scrape still answers:

    tunewatch_gpu_nvml_up 0
    tunewatch_gpu_nvml_unavailable{reason="library_not_found"} 1

The collector does not raise in that case (so the framework reports
`tunewatch_exporter_collector_success{collector="gpu"} 1`: the collector worked and says NVML
is absent), logs the reason once per change, and retries NVML initialisation with backoff.
Every metric is listed in docs/metrics.md (GPU collector section).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from exporters.collectors.nvml_reader import (
    GpuReader,
    GpuReading,
    GpuSnapshot,
    GpuUnavailable,
    NvmlReader,
    RecordedReader,
    XidEvent,
)

if TYPE_CHECKING:
    from tunewatch.config import ExporterConfig

log = logging.getLogger(__name__)


PREFIX = "tunewatch_gpu_"
GPU_LABELS = ("gpu", "uuid")
PROCESS_LABELS = ("gpu", "uuid", "pid", "process", "run", "rank", "local_rank")

# Fraction of the framework's collector timeout the NVML read may take, so this collector
# answers with `reason="timeout"` before the framework gives up on it.
READ_DEADLINE_FRACTION = 0.8


@dataclass(frozen=True)
class _Scalar:
    """One per-GPU scalar field of GpuReading and the metric it becomes."""

    attr: str
    name: str
    doc: str
    counter: bool = False


SCALARS: tuple[_Scalar, ...] = (
    _Scalar("utilization_ratio", "utilization_ratio",
            "Fraction of the last sample period in which a kernel ran on the GPU (0..1)."),
    _Scalar("memory_utilization_ratio", "memory_utilization_ratio",
            "Fraction of the last sample period in which device memory was read or written."),
    _Scalar("memory_used_bytes", "memory_used_bytes", "Device memory in use, bytes."),
    _Scalar("memory_free_bytes", "memory_free_bytes", "Device memory free, bytes."),
    _Scalar("memory_total_bytes", "memory_total_bytes", "Device memory installed, bytes."),
    _Scalar("temperature_celsius", "temperature_celsius", "GPU core temperature."),
    _Scalar("temperature_slowdown_celsius", "temperature_slowdown_celsius",
            "Temperature at which the GPU starts to slow its clocks."),
    _Scalar("temperature_shutdown_celsius", "temperature_shutdown_celsius",
            "Temperature at which the GPU shuts down."),
    _Scalar("power_watts", "power_watts", "Power draw of the board."),
    _Scalar("power_limit_watts", "power_limit_watts", "Enforced power limit of the board."),
    _Scalar("energy_joules", "energy_joules", "Energy used since the driver loaded.",
            counter=True),
    _Scalar("sm_clock_hz", "sm_clock_hz", "Current SM clock."),
    _Scalar("memory_clock_hz", "memory_clock_hz", "Current memory clock."),
    _Scalar("fan_speed_ratio", "fan_speed_ratio",
            "Intended fan speed as a fraction of the maximum (may exceed 1 briefly)."),
    _Scalar("pcie_link_generation", "pcie_link_generation", "Current PCIe link generation."),
    _Scalar("pcie_link_generation_max", "pcie_link_generation_max",
            "Highest PCIe link generation the GPU and system support."),
    _Scalar("pcie_link_width", "pcie_link_width", "Current PCIe link width, lanes."),
    _Scalar("pcie_link_width_max", "pcie_link_width_max", "Widest PCIe link possible, lanes."),
    _Scalar("ecc_corrected_errors", "ecc_corrected_errors",
            "Corrected ECC errors since the driver loaded (volatile).", counter=True),
    _Scalar("ecc_uncorrected_errors", "ecc_uncorrected_errors",
            "Uncorrected ECC errors since the driver loaded (volatile).", counter=True),
    _Scalar("remapped_rows_correctable", "remapped_rows_correctable",
            "Memory rows remapped after correctable errors (persistent)."),
    _Scalar("remapped_rows_uncorrectable", "remapped_rows_uncorrectable",
            "Memory rows remapped after uncorrectable errors (persistent)."),
    _Scalar("remapped_rows_pending", "remapped_rows_pending",
            "1 if a row remapping waits for a GPU reset."),
    _Scalar("remapped_rows_failure", "remapped_rows_failure",
            "1 if a row remapping failed (the GPU needs service)."),
)


# --------------------------------------------------------------------------- pure conversion


def _gauge(name: str, doc: str, labels: Iterable[str] = GPU_LABELS) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Iterable[str] = GPU_LABELS) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=list(labels))


def _ids(gpu: GpuReading) -> list[str]:
    return [str(gpu.index), gpu.uuid]


def _append(family: Metric, labels: dict[str, str], value: float) -> None:
    """add_metric without its per-sample dict(zip(...)): one label dict per GPU is shared by
    all of that GPU's samples (nothing mutates it), and the encoder renders it once. At 1k
    series this halves the collector's cost per scrape (bench/bench_exporter.py)."""
    name = family.name + "_total" if family.type == "counter" else family.name
    family.samples.append(Sample(name, labels, value))


def _nonempty(families: Iterable[Metric]) -> list[Metric]:
    """Unsupported fields are omitted: a family without samples is not published at all."""
    return [f for f in families if f.samples]


def scalar_families(gpus: list[GpuReading]) -> list[Metric]:
    """One family per supported scalar field; None (unsupported) adds no sample."""
    out: list[Metric] = []
    labels = [dict(zip(GPU_LABELS, _ids(gpu), strict=True)) for gpu in gpus]
    for spec in SCALARS:
        family = (_counter if spec.counter else _gauge)(spec.name, spec.doc)
        for gpu, ids in zip(gpus, labels, strict=True):
            value = getattr(gpu, spec.attr)
            if value is not None:
                _append(family, ids, float(value))
        out.append(family)
    return _nonempty(out)


def throttle_families(gpus: list[GpuReading]) -> list[Metric]:
    """Active clock event reasons (0/1) and cumulative throttled time per reason."""
    active = _gauge("throttle_reason_active",
                    "1 if this clock event (throttle) reason is holding clocks down now.",
                    (*GPU_LABELS, "reason"))
    seconds = _counter("throttled_seconds",
                       "Time clocks were held below target, by NVML violation policy.",
                       (*GPU_LABELS, "reason"))
    for gpu in gpus:
        base = dict(zip(GPU_LABELS, _ids(gpu), strict=True))
        for reason, on in sorted((gpu.throttle_reasons or {}).items()):
            _append(active, {**base, "reason": reason}, 1.0 if on else 0.0)
        for reason, value in sorted((gpu.throttled_seconds or {}).items()):
            _append(seconds, {**base, "reason": reason}, float(value))
    return _nonempty([active, seconds])


def process_families(gpus: list[GpuReading], max_processes: int) -> list[Metric]:
    """Per-process GPU memory for the largest `max_processes` per GPU; the rest counted."""
    count = _gauge("compute_processes", "Processes with a compute context on the GPU.")
    unlisted = _gauge("compute_processes_unlisted",
                      "Compute processes beyond the per-GPU cap (gpu_max_processes), not listed.")
    memory = _gauge("process_memory_used_bytes",
                    "GPU memory used by one compute process (largest per GPU, capped).",
                    PROCESS_LABELS)
    for gpu in gpus:
        if gpu.processes is None:
            continue
        procs = sorted(gpu.processes, key=lambda p: (-(p.used_memory_bytes or 0), p.pid))
        shown = [p for p in procs if p.used_memory_bytes is not None][:max(max_processes, 0)]
        count.add_metric(_ids(gpu), float(len(procs)))
        unlisted.add_metric(_ids(gpu), float(len(procs) - len(shown)))
        for p in shown:
            memory.add_metric([*_ids(gpu), str(p.pid), p.name, p.run, p.rank, p.local_rank],
                              float(p.used_memory_bytes or 0))
    return _nonempty([count, unlisted, memory])


def info_family(snapshot: GpuSnapshot) -> InfoMetricFamily:
    """Text facts per GPU: model, UUID, driver and CUDA version."""
    info = InfoMetricFamily(PREFIX.rstrip("_"), "GPU model, UUID, driver and CUDA version.",
                            labels=list(GPU_LABELS))
    for gpu in snapshot.gpus:
        info.add_metric(_ids(gpu), {"name": gpu.name, "driver_version": snapshot.driver_version,
                                    "cuda_version": snapshot.cuda_version})
    return info


def up_family(snapshot: GpuSnapshot) -> GaugeMetricFamily:
    """1 per GPU read this scrape, 0 per GPU NVML lists but could not read (e.g. lost)."""
    up = _gauge("up", "1 if the GPU was read this scrape, 0 if NVML lists it but it failed.")
    rows = [(g.index, g.uuid, 1.0) for g in snapshot.gpus]
    rows += [(f.index, f.uuid, 0.0) for f in snapshot.failures]
    for index, uuid, value in sorted(rows):
        up.add_metric([str(index), uuid], value)
    return up


def peak_family(gpus: list[GpuReading], peaks: Mapping[int, int]) -> list[Metric]:
    """Highest memory used since the previous scrape: the sampler's peaks and this read."""
    family = _gauge("memory_used_peak_bytes",
                    "Highest device memory used seen by the sampler since the previous scrape.")
    for gpu in gpus:
        candidates = [v for v in (gpu.memory_used_bytes, peaks.get(gpu.index)) if v is not None]
        if candidates:
            family.add_metric(_ids(gpu), float(max(candidates)))
    return _nonempty([family])


def snapshot_families(snapshot: GpuSnapshot, *, max_processes: int,
                      peaks: Mapping[int, int] | None = None) -> list[Metric]:
    """Everything one successful NVML read publishes (pure: no clocks, no state)."""
    gpu_count = _gauge("devices", "GPUs NVML reports on this host.", ())
    gpu_count.add_metric([], float(len(snapshot.gpus) + len(snapshot.failures)))
    return [
        gpu_count,
        up_family(snapshot),
        *_nonempty([info_family(snapshot)]),
        *scalar_families(snapshot.gpus),
        *peak_family(snapshot.gpus, peaks or {}),
        *throttle_families(snapshot.gpus),
        *process_families(snapshot.gpus, max_processes),
    ]


def availability_families(reason: str | None) -> list[Metric]:
    """`nvml_up` always; `nvml_unavailable{reason}` only while NVML cannot be used."""
    up = _gauge("nvml_up", "1 if NVML answered this scrape, 0 if not (see nvml_unavailable).", ())
    up.add_metric([], 0.0 if reason else 1.0)
    if not reason:
        return [up]
    why = _gauge("nvml_unavailable",
                 "1 with the reason NVML could not be used this scrape.", ("reason",))
    why.add_metric([reason], 1.0)
    return [up, why]


# --------------------------------------------------------------------------- state over time


class XidTracker:
    """Counts XID events per (gpu, uuid, xid) and remembers when each was last seen."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._last: dict[tuple[str, str, str], float] = {}

    def record(self, events: Iterable[XidEvent]) -> None:
        now = self._clock()
        with self._lock:
            for event in events:
                key = (str(event.gpu), event.uuid, str(event.xid))
                self._counts[key] = self._counts.get(key, 0) + 1
                self._last[key] = now
                log.warning("GPU %s (%s): XID %s", event.gpu, event.uuid or "?", event.xid)

    def families(self) -> list[Metric]:
        labels = (*GPU_LABELS, "xid")
        total = _counter("xid_errors", "XID critical errors the driver reported.", labels)
        last = _gauge("xid_last_timestamp_seconds",
                      "Unix time this exporter last received this XID for this GPU.", labels)
        with self._lock:
            for key in sorted(self._counts):
                total.add_metric(list(key), float(self._counts[key]))
                last.add_metric(list(key), self._last[key])
        return _nonempty([total, last])


class PeakTracker:
    """Highest memory used per GPU since the last `take()` (one take per scrape)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peaks: dict[int, int] = {}

    def observe(self, samples: Mapping[int, int]) -> None:
        with self._lock:
            for index, used in samples.items():
                self._peaks[index] = max(used, self._peaks.get(index, used))

    def take(self) -> dict[int, int]:
        with self._lock:
            peaks, self._peaks = self._peaks, {}
        return peaks


class ErrorCounter:
    """Per-GPU read errors by reason: lost GPUs and fields that failed other than unsupported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # concurrent scrapes may record at once
        self._counts: dict[tuple[str, str], int] = {}

    def record(self, snapshot: GpuSnapshot) -> None:
        keys = [(str(f.index), f.reason) for f in snapshot.failures]
        keys += [(str(g.index), r) for g in snapshot.gpus for r in g.field_errors.values()]
        with self._lock:
            for key in keys:
                self._counts[key] = self._counts.get(key, 0) + 1

    def families(self) -> list[Metric]:
        family = _counter("read_errors", "NVML errors reading one GPU (or one of its fields).",
                          ("gpu", "reason"))
        with self._lock:
            for key in sorted(self._counts):
                family.add_metric(list(key), float(self._counts[key]))
        return _nonempty([family])


class ReadTimeout(Exception):  # noqa: N818 - reported as reason="timeout"
    """The NVML read did not finish before its deadline (or an earlier one still hangs)."""


class BoundedCall:
    """Runs calls in one long-lived daemon worker and waits at most `timeout` for each.

    A stuck NVML call cannot be cancelled, so while one is still running no new call is
    queued: later scrapes fail fast with ReadTimeout instead of piling up. The worker is
    started once (a thread per read would cost more than reading a GPU).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] | None = None
        self._current: Future[Any] | None = None

    def __call__(self, fn: Callable[[], Any], timeout: float) -> Any:
        with self._lock:
            if self._current is not None and not self._current.done():
                raise ReadTimeout("an earlier read is still running")
            if self._jobs is None:
                self._jobs = queue.SimpleQueue()
                threading.Thread(target=self._work, args=(self._jobs,), name=self._name,
                                 daemon=True).start()
            future: Future[Any] = Future()
            self._current = future
            self._jobs.put((fn, future))
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise ReadTimeout(f"read exceeded {timeout:.3g}s") from None

    @staticmethod
    def _work(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
        while True:
            fn, future = jobs.get()
            try:
                future.set_result(fn())
            except BaseException as err:  # handed to the caller's thread by the future
                future.set_exception(err)


# --------------------------------------------------------------------------- collector


class GpuCollector:
    """The `gpu` collector: `collect()` yields fresh families each scrape.

    Background threads (started on the first scrape): a memory sampler every
    `sample_interval_seconds` feeding the peak gauge, and an XID event listener.
    """

    name = "gpu"

    def __init__(
        self,
        reader: GpuReader,
        *,
        max_processes: int = 16,
        sample_interval_seconds: float = 1.0,
        read_timeout_seconds: float = 4.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.max_processes = max_processes
        self.sample_interval_seconds = sample_interval_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self.xids = XidTracker(clock)
        self.peaks = PeakTracker()
        self.errors = ErrorCounter()
        self._call = BoundedCall("gpu-nvml-read")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._last_reason: str | None = None
        self._logged_reason = False

    def start(self) -> None:
        """Start the sampler and XID threads once (idempotent)."""
        with self._start_lock:
            if self._threads:
                return
            for target, name in ((self._sample_loop, "gpu-peak-sampler"),
                                 (self._xid_loop, "gpu-xid-events")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def close(self) -> None:
        """Stop the background threads and release the reader."""
        self._stop.set()
        self.reader.close()
        for thread in self._threads:
            thread.join(timeout=2.0)

    def describe(self) -> list[Metric]:
        """No up-front description: registering must not trigger an NVML read."""
        return []

    def collect(self) -> Iterator[Metric]:
        self.start()
        snapshot, reason = self._read()
        self._note_reason(reason)
        yield from availability_families(reason)
        if snapshot is not None:
            self.errors.record(snapshot)
            yield from snapshot_families(snapshot, max_processes=self.max_processes,
                                         peaks=self.peaks.take())
        yield from self.errors.families()
        yield from self.xids.families()

    def _read(self) -> tuple[GpuSnapshot | None, str | None]:
        try:
            return self._call(self.reader.read, self.read_timeout_seconds), None
        except GpuUnavailable as err:
            return None, err.reason
        except ReadTimeout:
            return None, "timeout"

    def _note_reason(self, reason: str | None) -> None:
        """Log NVML becoming unavailable (with why) or available again, once per change."""
        if reason == self._last_reason and self._logged_reason:
            return
        if reason:
            log.warning("GPU collector: NVML unavailable (%s); retrying with backoff", reason)
        elif self._logged_reason:
            log.info("GPU collector: NVML available again")
        self._last_reason, self._logged_reason = reason, True

    def _sample_loop(self) -> None:
        failing = False
        while not self._stop.wait(self.sample_interval_seconds):
            try:
                self.peaks.observe(self.reader.sample_memory())
                failing = False
            except Exception:  # the sampler must never die; the scrape reports errors
                if not failing:
                    log.exception("GPU memory sampler failed; will keep trying")
                failing = True

    def _xid_loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.xids.record(self.reader.wait_xid_events(1.0))
                failing = False
            except Exception:
                if not failing:
                    log.exception("GPU XID listener failed; will keep trying")
                failing = True
                self._stop.wait(self.sample_interval_seconds)


def create_collector(cfg: ExporterConfig) -> GpuCollector:
    """Factory the framework calls; `exporter.gpu_readings_file` swaps NVML for a recording."""
    path = cfg.gpu_readings_file
    reader: GpuReader
    if path:
        log.warning("GPU collector serving recorded readings from %s "
                    "(exporter.gpu_readings_file): test/demo mode", path)
        reader = RecordedReader.from_file(path)
    else:
        reader = NvmlReader()
    return GpuCollector(
        reader,
        max_processes=cfg.gpu_max_processes,
        sample_interval_seconds=cfg.gpu_sample_interval_seconds,
        read_timeout_seconds=cfg.collector_timeout_seconds * READ_DEADLINE_FRACTION,
    )
