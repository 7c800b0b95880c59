"""GPU readings: the plain data one NVML read produces, and the reader interface.

Why apart from NVML: the collector, the metric families, the recorded reader and the
fixture script all speak these dataclasses, and none of them needs pynvml to do so. A
field the board does not support stays None and is omitted from the exposition, never
published as 0. Readers: `NvmlReader` (nvml.py) on a GPU host, `RecordedReader`
(recorded.py) for tests and demos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class ProcessReading:
    """One compute process on a GPU; run/rank come from its environment ("" if unknown)."""

    pid: int
    used_memory_bytes: int | None = None
    name: str = ""
    run: str = ""
    rank: str = ""
    local_rank: str = ""


@dataclass
class GpuReading:
    """Everything read from one GPU in one scrape; None means the board does not support it."""

    index: int
    uuid: str
    name: str = ""
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_celsius: float | None = None
    temperature_slowdown_celsius: float | None = None
    temperature_shutdown_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    sm_clock_hz: float | None = None
    memory_clock_hz: float | None = None
    fan_speed_ratio: float | None = None
    pcie_link_generation: int | None = None
    pcie_link_generation_max: int | None = None
    pcie_link_width: int | None = None
    pcie_link_width_max: int | None = None
    ecc_corrected_errors: int | None = None
    ecc_uncorrected_errors: int | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    throttle_reasons: dict[str, bool] | None = None
    throttled_seconds: dict[str, float] | None = None
    processes: list[ProcessReading] | None = None
    field_errors: dict[str, str] = field(default_factory=dict)


@dataclass
class GpuFailure:
    """A GPU that could not be read at all this scrape (e.g. `gpu_is_lost`)."""

    index: int
    reason: str
    uuid: str = ""


@dataclass
class GpuSnapshot:
    """One read of every GPU on the host; failures never hide the GPUs that did answer."""

    driver_version: str = ""
    cuda_version: str = ""
    gpus: list[GpuReading] = field(default_factory=list)
    failures: list[GpuFailure] = field(default_factory=list)


@dataclass
class XidEvent:
    """One XID critical error reported by the driver for a GPU."""

    gpu: int
    xid: int
    uuid: str = ""


class GpuUnavailable(Exception):  # noqa: N818 - a state, not a programming error
    """NVML cannot be used at all right now; `reason` is a bounded label value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GpuReader(Protocol):
    """What the GPU collector needs from the world. Implementations must be thread-safe:
    `read` runs in a scrape worker while the sampler and XID threads run beside it."""

    def read(self) -> GpuSnapshot:
        """Read every GPU; raise GpuUnavailable when NVML as a whole cannot be used."""
        ...

    def sample_memory(self) -> dict[int, int]:
        """Cheap memory-used sample per GPU index for the peak sampler ({} if unavailable)."""
        ...

    def wait_xid_events(self, timeout_seconds: float) -> list[XidEvent]:
        """Block up to timeout_seconds for XID events; [] when none (or NVML unavailable)."""
        ...

    def close(self) -> None:
        """Release NVML resources."""
        ...
