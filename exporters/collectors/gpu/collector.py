"""The GPU collector: NVML readings as `tunewatch_gpu_*` metric families, collected on scrape.

Why this shape: a GPU host's exporter must keep answering when NVML does not (no driver, a
driver reload, a lost GPU, a call that never returns). So every read runs in a worker with a
deadline (exporters/bounded.py), one GPU's failure is reported beside the GPUs that still
answer, and a missing NVML is a state the collector reports, not an exception. Readings
come from a `GpuReader` (readings.py: NVML in nvml.py, a recording in recorded.py); turning
them into metric families is the pure function `snapshot_families` (families.py), tested
against recorded H100 and consumer-GPU readings.

Exposition (abridged, one H100):

    tunewatch_gpu_nvml_up 1
    tunewatch_gpu_info{cuda_version="13.1",driver_version="590.48.01",gpu="0",
                       name="NVIDIA H100 80GB HBM3",uuid="GPU-..."} 1
    tunewatch_gpu_up{gpu="0",uuid="GPU-..."} 1
    tunewatch_gpu_peak_flops{gpu="0",precision="bf16",uuid="GPU-..."} 9.894e+14
    tunewatch_gpu_peak_flops_unknown_boards 0
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
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from exporters.bounded import BoundedCall, CallTimeout
from exporters.collectors.gpu.families import availability_families, snapshot_families
from exporters.collectors.gpu.nvml import NvmlReader
from exporters.collectors.gpu.peak_flops import PeakFlopsTable
from exporters.collectors.gpu.readings import GpuReader, GpuSnapshot, GpuUnavailable
from exporters.collectors.gpu.recorded import RecordedReader
from exporters.collectors.gpu.trackers import ErrorCounter, PeakTracker, XidTracker

if TYPE_CHECKING:
    from tunewatch.core.config import ExporterConfig

log = logging.getLogger(__name__)

# Fraction of the framework's collector timeout the NVML read may take, so this collector
# answers with `reason="timeout"` before the framework gives up on it.
READ_DEADLINE_FRACTION = 0.8


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
        peak_flops: PeakFlopsTable | None = None,
    ) -> None:
        self.reader = reader
        self.peak_flops = peak_flops or PeakFlopsTable()
        self.max_processes = max_processes
        self.sample_interval_seconds = sample_interval_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self.xids = XidTracker(clock)
        self.peaks = PeakTracker()
        self.errors = ErrorCounter()
        self._read_call = BoundedCall(lambda: self.reader.read(), "gpu-nvml-read")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._last_reason: str | None = None
        self._logged_reason = False
        self._unknown_boards: set[str] = set()
        self._unknown_lock = threading.Lock()  # concurrent scrapes may meet a board at once

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
            self._note_unknown_boards(snapshot)
            yield from snapshot_families(snapshot, max_processes=self.max_processes,
                                         peaks=self.peaks.take(), peak_flops=self.peak_flops)
        yield from self.errors.families()
        yield from self.xids.families()

    def _read(self) -> tuple[GpuSnapshot | None, str | None]:
        try:
            return self._read_call.call(self.read_timeout_seconds), None
        except GpuUnavailable as err:
            return None, err.reason
        except CallTimeout:
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

    def _note_unknown_boards(self, snapshot: GpuSnapshot) -> None:
        """Warn once per board name without a peak FLOPS entry: its MFU cannot be computed
        until `exporter.gpu_peak_flops` names it (the gauge counts such GPUs every scrape)."""
        names = {g.name for g in snapshot.gpus if self.peak_flops.lookup(g.name) is None}
        with self._unknown_lock:
            new = sorted(names - self._unknown_boards)
            self._unknown_boards.update(new)
        for name in new:
            log.warning("GPU board %r has no peak FLOPS entry: tunewatch_gpu_peak_flops is "
                        "absent for it (add it under exporter.gpu_peak_flops, FLOPS)", name)

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
        peak_flops=PeakFlopsTable(cfg.gpu_peak_flops),
    )
