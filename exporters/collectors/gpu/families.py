"""GPU readings as Prometheus metric families: the pure conversion, no clocks, no state.

Why apart from the collector: what a reading becomes (names, units, labels, which fields
are omitted) is the exporter's contract with dashboards and alerts, so it is a function of
the readings alone, tested byte for byte against recorded H100 and consumer-GPU readings
(tests/test_gpu_convert.py, tests/test_exposition.py). Every metric here is listed in
docs/metrics.md (GPU collector section); the collector (collector.py) calls these each
scrape, and the trackers (trackers.py) render their counts through them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.collectors.gpu.peak_flops import PRECISION, PeakFlopsTable
from exporters.collectors.gpu.readings import GpuReading, GpuSnapshot
from exporters.exposition import RowFamily

PREFIX = "tunewatch_gpu_"
GPU_LABELS = ("gpu", "uuid")
PROCESS_LABELS = ("gpu", "uuid", "pid", "process", "run", "rank", "local_rank")
PEAK_FLOPS_LABELS = (*GPU_LABELS, "precision")
# The built-in table alone (no configured overrides): what a scrape uses unless told.
BUILT_IN_PEAKS = PeakFlopsTable()


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



def _gauge(name: str, doc: str, labels: Iterable[str] = GPU_LABELS) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Iterable[str] = GPU_LABELS) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=list(labels))


def _ids(gpu: GpuReading) -> list[str]:
    return [str(gpu.index), gpu.uuid]


def _rows(name: str, doc: str, labels: tuple[str, ...] = GPU_LABELS,
          counter: bool = False) -> RowFamily:
    """A family of rows (exporters/exposition.py): the GPU collector publishes most of the
    exporter's series, and as rows each costs one tuple per scrape and renders from a line
    start remembered by its label values (bench/bench_exporter.py)."""
    return RowFamily(PREFIX + name, doc, "counter" if counter else "gauge", labels)


def _nonempty(families: Iterable[Metric]) -> list[Metric]:
    """Unsupported fields are omitted: a family without samples is not published at all."""
    return [f for f in families if (f.rows if isinstance(f, RowFamily) else f.samples)]


def scalar_families(gpus: list[GpuReading]) -> list[Metric]:
    """One family per supported scalar field; None (unsupported) adds no sample."""
    out: list[Metric] = []
    keys = [(str(gpu.index), gpu.uuid) for gpu in gpus]
    for spec in SCALARS:
        family = _rows(spec.name, spec.doc, counter=spec.counter)
        rows = family.rows
        for gpu, key in zip(gpus, keys, strict=True):
            value = getattr(gpu, spec.attr)
            if value is not None:
                rows.append((key, float(value)))
        out.append(family)
    return _nonempty(out)


def throttle_families(gpus: list[GpuReading]) -> list[Metric]:
    """Active clock event reasons (0/1) and cumulative throttled time per reason."""
    labels = (*GPU_LABELS, "reason")
    active = _rows("throttle_reason_active",
                   "1 if this clock event (throttle) reason is holding clocks down now.", labels)
    seconds = _rows("throttled_seconds",
                    "Time clocks were held below target, by NVML violation policy.", labels,
                    counter=True)
    for gpu in gpus:
        index = str(gpu.index)
        for reason, on in sorted((gpu.throttle_reasons or {}).items()):
            active.rows.append(((index, gpu.uuid, reason), 1.0 if on else 0.0))
        for reason, value in sorted((gpu.throttled_seconds or {}).items()):
            seconds.rows.append(((index, gpu.uuid, reason), float(value)))
    return _nonempty([active, seconds])


def process_families(gpus: list[GpuReading], max_processes: int) -> list[Metric]:
    """Per-process GPU memory for the largest `max_processes` per GPU; the rest counted."""
    count = _rows("compute_processes", "Processes with a compute context on the GPU.")
    unlisted = _rows("compute_processes_unlisted",
                     "Compute processes beyond the per-GPU cap (gpu_max_processes), not listed.")
    memory = _rows("process_memory_used_bytes",
                   "GPU memory used by one compute process (largest per GPU, capped).",
                   PROCESS_LABELS)
    for gpu in gpus:
        if gpu.processes is None:
            continue
        procs = sorted(gpu.processes, key=lambda p: (-(p.used_memory_bytes or 0), p.pid))
        shown = [p for p in procs if p.used_memory_bytes is not None][:max(max_processes, 0)]
        key = (str(gpu.index), gpu.uuid)
        count.add_row(key, float(len(procs)))
        unlisted.add_row(key, float(len(procs) - len(shown)))
        for p in shown:
            memory.add_row((*key, str(p.pid), p.name, p.run, p.rank, p.local_rank),
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


def up_family(snapshot: GpuSnapshot) -> RowFamily:
    """1 per GPU read this scrape, 0 per GPU NVML lists but could not read (e.g. lost)."""
    up = _rows("up", "1 if the GPU was read this scrape, 0 if NVML lists it but it failed.")
    rows = [(g.index, g.uuid, 1.0) for g in snapshot.gpus]
    rows += [(f.index, f.uuid, 0.0) for f in snapshot.failures]
    for index, uuid, value in sorted(rows):
        up.add_row((str(index), uuid), value)
    return up


def peak_family(gpus: list[GpuReading], peaks: Mapping[int, int]) -> list[Metric]:
    """Highest memory used since the previous scrape: the sampler's peaks and this read."""
    family = _rows("memory_used_peak_bytes",
                   "Highest device memory used seen by the sampler since the previous scrape.")
    for gpu in gpus:
        candidates = [v for v in (gpu.memory_used_bytes, peaks.get(gpu.index)) if v is not None]
        if candidates:
            family.add_row((str(gpu.index), gpu.uuid), float(max(candidates)))
    return _nonempty([family])


def peak_flops_families(gpus: list[GpuReading], table: PeakFlopsTable) -> list[Metric]:
    """The board's dense BF16 tensor-core peak per GPU (peak_flops.py), absent for a board
    the table does not know; how many GPUs that is, always (0 when all are known), so a
    missing MFU can be told from an unknown board."""
    flops = _rows("peak_flops",
                  "Dense tensor-core peak of the board with FP32 accumulate, no sparsity, "
                  "FLOPS (vendor datasheet figure or exporter.gpu_peak_flops).",
                  PEAK_FLOPS_LABELS)
    unknown = _gauge("peak_flops_unknown_boards",
                     "GPUs whose board name has no peak FLOPS entry (see gpu_info name).", ())
    missing = 0
    for gpu in gpus:
        peak = table.lookup(gpu.name)
        if peak is None:
            missing += 1
        else:
            flops.add_row((str(gpu.index), gpu.uuid, PRECISION), float(peak))
    unknown.add_metric([], float(missing))
    return [*_nonempty([flops]), unknown]


def snapshot_families(snapshot: GpuSnapshot, *, max_processes: int,
                      peaks: Mapping[int, int] | None = None,
                      peak_flops: PeakFlopsTable = BUILT_IN_PEAKS) -> list[Metric]:
    """Everything one successful NVML read publishes (pure: no clocks, no state)."""
    gpu_count = _gauge("devices", "GPUs NVML reports on this host.", ())
    gpu_count.add_metric([], float(len(snapshot.gpus) + len(snapshot.failures)))
    return [
        gpu_count,
        up_family(snapshot),
        *_nonempty([info_family(snapshot)]),
        *peak_flops_families(snapshot.gpus, peak_flops),
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


def xid_families(counts: Mapping[tuple[str, str, str], int],
                 last_seen: Mapping[tuple[str, str, str], float]) -> list[Metric]:
    """XID events per (gpu, uuid, xid): how many, and when this exporter last saw one."""
    labels = (*GPU_LABELS, "xid")
    total = _counter("xid_errors", "XID critical errors the driver reported.", labels)
    last = _gauge("xid_last_timestamp_seconds",
                  "Unix time this exporter last received this XID for this GPU.", labels)
    for key in sorted(counts):
        total.add_metric(list(key), float(counts[key]))
        last.add_metric(list(key), last_seen[key])
    return _nonempty([total, last])


def read_error_families(counts: Mapping[tuple[str, str], int]) -> list[Metric]:
    """NVML read errors per (gpu, reason): lost GPUs and fields that failed."""
    family = _counter("read_errors", "NVML errors reading one GPU (or one of its fields).",
                      ("gpu", "reason"))
    for key in sorted(counts):
        family.add_metric(list(key), float(counts[key]))
    return _nonempty([family])
