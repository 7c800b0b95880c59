"""The NVML reader: every GPU on the host read through nvidia-ml-py (`import pynvml`).

Why this shape: NVML reports trouble as error codes, and each code means something
different to a monitoring reader: a field the board lacks is omitted, a lost GPU is
reported beside the GPUs that still answer, and NVML itself going away (driver unloaded or
reloaded) is a state to report and recover from by initialising again, with backoff. The
reader returns the plain readings of readings.py; `nvml` is the pynvml module or, in
tests, a stand-in for the driver.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml

from exporters.collectors.gpu.processes import ProcessDescriber
from exporters.collectors.gpu.readings import (
    GpuFailure,
    GpuReading,
    GpuSnapshot,
    GpuUnavailable,
    ProcessReading,
    XidEvent,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Clock event ("throttle") reason bits, named as nvidia-smi names them.
THROTTLE_REASON_BITS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}

# nvmlDeviceGetViolationStatus policies: cumulative time clocks were held below target.
VIOLATION_POLICIES: dict[str, int] = {
    "power_cap": pynvml.NVML_PERF_POLICY_POWER,
    "thermal": pynvml.NVML_PERF_POLICY_THERMAL,
    "sync_boost": pynvml.NVML_PERF_POLICY_SYNC_BOOST,
    "board_limit": pynvml.NVML_PERF_POLICY_BOARD_LIMIT,
    "low_utilization": pynvml.NVML_PERF_POLICY_LOW_UTILIZATION,
    "reliability": pynvml.NVML_PERF_POLICY_RELIABILITY,
}

# Reasons: "gpu_is_lost", "library_not_found", ... derived from pynvml's own constant names.
_ERROR_REASONS: dict[int, str] = {
    getattr(pynvml, name): name[len("NVML_ERROR_"):].lower()
    for name in dir(pynvml)
    if name.startswith("NVML_ERROR_") and isinstance(getattr(pynvml, name), int)
}

# The field simply does not exist on this board or driver: omit it silently.
_UNSUPPORTED = {pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND}
# This GPU is gone or unusable: abandon its reading, keep the others.
_GPU_FATAL = {
    pynvml.NVML_ERROR_GPU_IS_LOST,
    pynvml.NVML_ERROR_RESET_REQUIRED,
    pynvml.NVML_ERROR_GPU_NOT_FOUND,
}
# NVML as a whole is gone (driver unloaded or reloaded): initialise again.
_NVML_FATAL = {
    pynvml.NVML_ERROR_UNINITIALIZED,
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
}


def nvml_error_reason(err: BaseException) -> str:
    """A bounded label value for an NVML error (`gpu_is_lost`, `no_permission`, ...)."""
    code = getattr(err, "value", None)
    if isinstance(code, int):
        return _ERROR_REASONS.get(code, f"nvml_error_{code}")
    return "error"


def _code(err: pynvml.NVMLError) -> int:
    return int(getattr(err, "value", pynvml.NVML_ERROR_UNKNOWN))


# --------------------------------------------------------------------------- reader


class _GpuLost(Exception):  # noqa: N818 - control flow inside the reader
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Fields:
    """Calls NVML for one GPU, sorting each error into omit / count / abandon GPU / abandon NVML."""

    def __init__(self, reading: GpuReading) -> None:
        self.reading = reading

    def get(self, field_name: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except pynvml.NVMLError as err:
            code = _code(err)
            if code in _UNSUPPORTED:
                return None
            if code in _NVML_FATAL:
                raise
            reason = nvml_error_reason(err)
            if code in _GPU_FATAL:
                raise _GpuLost(reason) from err
            self.reading.field_errors[field_name] = reason
            log.debug("GPU %d: %s failed: %s", self.reading.index, field_name, reason)
            return None


class NvmlReader:
    """Reads GPUs through NVML (nvidia-ml-py); `nvml` is the pynvml module or a stand-in.

    Initialisation happens lazily in `read()` and again after NVML reports itself
    uninitialised or the driver unloaded (a driver reload), with exponential backoff
    between failed attempts so a host without a driver is not hammered every scrape.
    """

    def __init__(
        self,
        nvml: Any = pynvml,
        *,
        describer: ProcessDescriber | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
    ) -> None:
        self._nvml = nvml
        self._describer = describer or ProcessDescriber()
        self._clock = clock
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._backoff = 0.0
        self._next_init = 0.0
        self._last_reason = ""
        self._initialised = False
        self._generation = 0
        self._event_lock = threading.Lock()
        self._event_set: Any = None
        self._event_generation = -1
        self._uuids: dict[int, str] = {}
        self._idle = threading.Event()

    # ----------------------------------------------------------- init and re-init

    def _ensure_initialised(self) -> None:
        if self._initialised:
            return
        now = self._clock()
        if now < self._next_init:
            raise GpuUnavailable(self._last_reason)
        try:
            self._nvml.nvmlInit()
        except pynvml.NVMLError as err:
            self._backoff = min(max(self._backoff * 2, self._backoff_initial), self._backoff_max)
            self._next_init = now + self._backoff
            self._last_reason = nvml_error_reason(err)
            raise GpuUnavailable(self._last_reason) from err
        self._backoff = 0.0
        self._initialised = True
        self._generation += 1
        log.info("NVML initialised (generation %d)", self._generation)

    def _lose_nvml(self, err: pynvml.NVMLError) -> GpuUnavailable:
        """NVML itself failed mid-read: shut down so the next read initialises afresh."""
        reason = nvml_error_reason(err)
        if self._initialised:
            self._initialised = False
            self._last_reason = reason
            self._next_init = self._clock()  # first retry at the next scrape, then backoff
            # After a driver reload the old NVML state may already be invalid.
            with contextlib.suppress(pynvml.NVMLError):
                self._nvml.nvmlShutdown()
        return GpuUnavailable(reason)

    # ----------------------------------------------------------- full read

    def read(self) -> GpuSnapshot:
        self._ensure_initialised()
        try:
            return self._read_all()
        except pynvml.NVMLError as err:
            if _code(err) in _NVML_FATAL:
                raise self._lose_nvml(err) from err
            # e.g. nvmlDeviceGetCount failing: an NVML state to report, not a collector bug
            raise GpuUnavailable(nvml_error_reason(err)) from err

    def _read_all(self) -> GpuSnapshot:
        nvml = self._nvml
        snapshot = GpuSnapshot(
            driver_version=_optional(nvml.nvmlSystemGetDriverVersion) or "",
            cuda_version=_cuda_version(_optional(nvml.nvmlSystemGetCudaDriverVersion)),
        )
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                snapshot.gpus.append(self._read_gpu(index))
            except _GpuLost as lost:
                snapshot.failures.append(GpuFailure(index, lost.reason, self._uuids.get(index, "")))
            except pynvml.NVMLError as err:
                if _code(err) in _NVML_FATAL:
                    raise
                reason = nvml_error_reason(err)
                snapshot.failures.append(GpuFailure(index, reason, self._uuids.get(index, "")))
        self._describer.forget_except(
            {p.pid for g in snapshot.gpus for p in (g.processes or [])}
        )
        return snapshot

    def _read_gpu(self, index: int) -> GpuReading:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = str(nvml.nvmlDeviceGetUUID(handle))
        self._uuids[index] = uuid
        reading = GpuReading(index=index, uuid=uuid)
        fields = _Fields(reading)
        reading.name = str(fields.get("name", nvml.nvmlDeviceGetName, handle) or "")
        self._read_load(fields, handle)
        self._read_thermal_power(fields, handle)
        self._read_clocks_pcie(fields, handle)
        self._read_reliability(fields, handle)
        self._read_throttle(fields, handle)
        reading.processes = self._read_processes(fields, handle)
        return reading

    def _read_load(self, f: _Fields, handle: Any) -> None:
        nvml, r = self._nvml, f.reading
        util = f.get("utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            r.utilization_ratio = _div(util.gpu, 100)
            r.memory_utilization_ratio = _div(util.memory, 100)
        mem = f.get("memory", _memory_info, nvml, handle)
        if mem is not None:
            r.memory_used_bytes, r.memory_free_bytes = int(mem.used), int(mem.free)
            r.memory_total_bytes = int(mem.total)

    def _read_thermal_power(self, f: _Fields, handle: Any) -> None:
        nvml, r = self._nvml, f.reading
        r.temperature_celsius = _num(
            f.get("temperature", nvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
        )
        r.temperature_slowdown_celsius = _num(f.get(
            "temperature_slowdown", nvml.nvmlDeviceGetTemperatureThreshold, handle,
            pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN))
        r.temperature_shutdown_celsius = _num(f.get(
            "temperature_shutdown", nvml.nvmlDeviceGetTemperatureThreshold, handle,
            pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN))
        r.power_watts = _div(f.get("power", nvml.nvmlDeviceGetPowerUsage, handle), 1000)
        r.power_limit_watts = _div(
            f.get("power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle), 1000)
        r.energy_joules = _div(
            f.get("energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle), 1000)
        r.fan_speed_ratio = _div(f.get("fan", nvml.nvmlDeviceGetFanSpeed, handle), 100)

    def _read_clocks_pcie(self, f: _Fields, handle: Any) -> None:
        nvml, r = self._nvml, f.reading
        r.sm_clock_hz = _mhz(
            f.get("sm_clock", nvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM))
        r.memory_clock_hz = _mhz(
            f.get("memory_clock", nvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_MEM))
        r.pcie_link_generation = f.get(
            "pcie_gen", nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle)
        r.pcie_link_generation_max = f.get(
            "pcie_gen_max", nvml.nvmlDeviceGetMaxPcieLinkGeneration, handle)
        r.pcie_link_width = f.get("pcie_width", nvml.nvmlDeviceGetCurrPcieLinkWidth, handle)
        r.pcie_link_width_max = f.get(
            "pcie_width_max", nvml.nvmlDeviceGetMaxPcieLinkWidth, handle)

    def _read_reliability(self, f: _Fields, handle: Any) -> None:
        nvml, r = self._nvml, f.reading
        r.ecc_corrected_errors = f.get(
            "ecc_corrected", nvml.nvmlDeviceGetTotalEccErrors, handle,
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC)
        r.ecc_uncorrected_errors = f.get(
            "ecc_uncorrected", nvml.nvmlDeviceGetTotalEccErrors, handle,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)
        rows = f.get("remapped_rows", nvml.nvmlDeviceGetRemappedRows, handle)
        if rows is not None:
            corr, unc, pending, failure = rows
            r.remapped_rows_correctable, r.remapped_rows_uncorrectable = int(corr), int(unc)
            r.remapped_rows_pending, r.remapped_rows_failure = bool(pending), bool(failure)

    def _read_throttle(self, f: _Fields, handle: Any) -> None:
        nvml, r = self._nvml, f.reading
        supported = _first_supported(f, "throttle_supported", handle, (
            getattr(nvml, "nvmlDeviceGetSupportedClocksEventReasons", None),
            getattr(nvml, "nvmlDeviceGetSupportedClocksThrottleReasons", None)))
        active = _first_supported(f, "throttle_active", handle, (
            getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None),
            getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)))
        if supported is not None and active is not None:
            r.throttle_reasons = {
                name: bool(active & bit)
                for name, bit in THROTTLE_REASON_BITS.items() if supported & bit
            }
        seconds: dict[str, float] = {}
        for name, policy in VIOLATION_POLICIES.items():
            viol = f.get(f"throttled_{name}", nvml.nvmlDeviceGetViolationStatus, handle, policy)
            if viol is not None:
                seconds[name] = int(viol.violationTime) / 1e9  # nanoseconds
        r.throttled_seconds = seconds or None

    def _read_processes(self, f: _Fields, handle: Any) -> list[ProcessReading] | None:
        procs = f.get("processes", self._nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        if procs is None:
            return None
        out = []
        for proc in procs:
            pid = int(proc.pid)
            used = getattr(proc, "usedGpuMemory", None)  # None under WDDM or in some containers
            name, run, rank, local_rank = self._describer.describe(pid)
            out.append(ProcessReading(pid, None if used is None else int(used), name, run,
                                      rank, local_rank))
        return out

    # ----------------------------------------------------------- sampler and events

    def sample_memory(self) -> dict[int, int]:
        if not self._initialised:
            return {}  # only read() initialises, so backoff lives in one place
        out: dict[int, int] = {}
        try:
            count = self._nvml.nvmlDeviceGetCount()
        except pynvml.NVMLError:
            return {}
        for index in range(count):
            try:
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                out[index] = int(_memory_info(self._nvml, handle).used)
            except pynvml.NVMLError:
                continue  # the scrape's read reports and counts the error
        return out

    def _event_set_now(self) -> Any:
        """The XID event set for the current NVML generation, (re)registered as needed."""
        with self._event_lock:
            if not self._initialised:
                return None
            if self._event_generation == self._generation:
                return self._event_set
            if self._event_set is not None:
                with contextlib.suppress(pynvml.NVMLError):  # invalid after a driver reload
                    self._nvml.nvmlEventSetFree(self._event_set)
            self._event_set = self._nvml.nvmlEventSetCreate()
            self._event_generation = self._generation
            for index in range(self._nvml.nvmlDeviceGetCount()):
                self._register_xid(index)
            return self._event_set

    def _register_xid(self, index: int) -> None:
        try:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml.nvmlDeviceRegisterEvents(
                handle, pynvml.nvmlEventTypeXidCriticalError, self._event_set)
        except pynvml.NVMLError as err:
            log.info("GPU %d: XID events unavailable: %s", index, nvml_error_reason(err))

    def wait_xid_events(self, timeout_seconds: float) -> list[XidEvent]:
        try:
            event_set = self._event_set_now()
        except pynvml.NVMLError as err:
            log.debug("XID event set: %s", nvml_error_reason(err))
            event_set = None
        if event_set is None:
            self._idle.wait(timeout_seconds)
            return []
        events: list[XidEvent] = []
        wait_ms = int(timeout_seconds * 1000)
        while len(events) < 64:
            event = self._wait_one(event_set, wait_ms)
            if event is None:
                break
            events.append(event)
            wait_ms = 0  # drain what is already queued, then hand the batch over
        return events

    def _wait_one(self, event_set: Any, wait_ms: int) -> XidEvent | None:
        try:
            data = self._nvml.nvmlEventSetWait(event_set, wait_ms)
        except pynvml.NVMLError as err:
            if _code(err) != pynvml.NVML_ERROR_TIMEOUT:
                log.debug("XID wait: %s", nvml_error_reason(err))
                self._idle.wait(wait_ms / 1000.0)
            return None
        if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
            return None
        try:
            index = int(self._nvml.nvmlDeviceGetIndex(data.device))
        except pynvml.NVMLError:
            index = -1
        return XidEvent(gpu=index, xid=int(data.eventData), uuid=self._uuids.get(index, ""))

    def close(self) -> None:
        self._idle.set()
        if self._initialised:
            self._initialised = False
            with contextlib.suppress(pynvml.NVMLError):
                self._nvml.nvmlShutdown()


def _memory_info(nvml: Any, handle: Any) -> Any:
    """Memory info v2 (used excludes driver-reserved memory, as nvidia-smi shows), else v1."""
    try:
        return nvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    except pynvml.NVMLError as err:
        if _code(err) not in _UNSUPPORTED | {pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH}:
            raise
    return nvml.nvmlDeviceGetMemoryInfo(handle)


def _first_supported(f: _Fields, name: str, handle: Any,
                     fns: tuple[Callable[..., int] | None, ...]) -> int | None:
    """Newer drivers name them clock *event* reasons; older ones only have *throttle*."""
    for fn in fns:
        if fn is not None:
            value = f.get(name, fn, handle)
            if value is not None:
                return int(value)
    return None


def _optional(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except pynvml.NVMLError as err:
        if _code(err) in _NVML_FATAL:
            raise
        return None


def _cuda_version(value: int | None) -> str:
    """12040 -> "12.4", the way nvidia-smi prints it."""
    if not value:
        return ""
    return f"{value // 1000}.{(value % 1000) // 10}"


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _div(value: Any, divisor: int) -> float | None:
    """NVML's milli-units and percents to base units (division rounds exactly: 631950 mW)."""
    return None if value is None else float(value) / divisor


def _mhz(value: Any) -> float | None:
    return None if value is None else float(value) * 1e6
