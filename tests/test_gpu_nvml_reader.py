"""NvmlReader: unit conversion, unsupported fields, lost GPUs, driver reloads, init backoff.

NVML cannot lose a GPU on demand, so `FakeNvml` stands in for the pynvml module (the world
the reader talks to, not the reader): it answers each device call from a table of raw NVML
values (milliwatts, MHz, millijoules, percent) or raises the NVMLError a real driver raises.
The raw table mirrors the H100 capture, so the reader must reproduce h100-load.json exactly.
The last tests use the real pynvml on this machine.
"""

# ruff: noqa: N802 - FakeNvml mirrors pynvml's camelCase function names.

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from exporters.collectors.gpu.nvml import NvmlReader, nvml_error_reason
from exporters.collectors.gpu.processes import ProcessDescriber
from exporters.collectors.gpu.readings import GpuFailure, GpuUnavailable, XidEvent
from exporters.collectors.gpu.recorded import gpu_reading_from_dict

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"


class Err:
    """A table entry meaning: this call raises NVMLError(code)."""

    def __init__(self, code: int) -> None:
        self.code = code


def h100_raw() -> dict[str, Any]:
    """Raw NVML answers of the captured H100 (see tests/fixtures/gpu/README.md)."""
    thresholds = {pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: 87,
                  pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: 90}
    clocks = {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 2619}
    ecc = {pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED: 0, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: 0}
    violations = {pynvml.NVML_PERF_POLICY_POWER: 0, pynvml.NVML_PERF_POLICY_THERMAL: 0,
                  pynvml.NVML_PERF_POLICY_SYNC_BOOST: 0}

    def memory(_h: int, version: int | None = None) -> SimpleNamespace:
        return SimpleNamespace(used=20780679168, free=64238911488, total=85520809984)

    def violation(_h: int, policy: int) -> SimpleNamespace:
        if policy not in violations:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(referenceTime=0, violationTime=violations[policy])

    return {
        "nvmlDeviceGetUUID": "GPU-00000000-0000-0000-0000-000000000000",
        "nvmlDeviceGetName": "NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetUtilizationRates": SimpleNamespace(gpu=100, memory=11),
        "nvmlDeviceGetMemoryInfo": memory,
        "nvmlDeviceGetTemperature": 59,
        "nvmlDeviceGetTemperatureThreshold": lambda _h, kind: thresholds[kind],
        "nvmlDeviceGetPowerUsage": 631950,
        "nvmlDeviceGetEnforcedPowerLimit": 700000,
        "nvmlDeviceGetTotalEnergyConsumption": 86112345678,
        "nvmlDeviceGetFanSpeed": Err(pynvml.NVML_ERROR_NOT_SUPPORTED),
        "nvmlDeviceGetClockInfo": lambda _h, kind: clocks[kind],
        "nvmlDeviceGetCurrPcieLinkGeneration": 5,
        "nvmlDeviceGetMaxPcieLinkGeneration": 5,
        "nvmlDeviceGetCurrPcieLinkWidth": 16,
        "nvmlDeviceGetMaxPcieLinkWidth": 16,
        "nvmlDeviceGetTotalEccErrors": lambda _h, kind, _counter: ecc[kind],
        "nvmlDeviceGetRemappedRows": (0, 0, 0, 0),
        "nvmlDeviceGetSupportedClocksEventReasons": 511,
        "nvmlDeviceGetCurrentClocksEventReasons": 0,
        "nvmlDeviceGetViolationStatus": violation,
        "nvmlDeviceGetComputeRunningProcesses": [
            SimpleNamespace(pid=11327, usedGpuMemory=2690646016),
            SimpleNamespace(pid=11328, usedGpuMemory=1616904192),
            SimpleNamespace(pid=11345, usedGpuMemory=16452157440),
        ],
    }


class FakeNvml:
    """Stands in for the pynvml module: device calls answer from per-device tables."""

    def __init__(self, devices: list[dict[str, Any]]) -> None:
        self.devices = devices
        self.init_error: int | None = None
        self.global_error: int | None = None
        self.calls: dict[str, int] = {}
        self.events: list[SimpleNamespace] = []
        self.registered: list[int] = []

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _check(self) -> None:
        if self.global_error is not None:
            raise pynvml.NVMLError(self.global_error)

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return "590.48.01"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 13010

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check()
        return self._answer(index, "nvmlDeviceGetHandleByIndex", index, default=index)

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        return handle

    def nvmlEventSetCreate(self) -> str:
        self._count("nvmlEventSetCreate")
        self.registered = []
        return "event-set"

    def nvmlEventSetFree(self, _event_set: str) -> None:
        self._count("nvmlEventSetFree")

    def nvmlDeviceRegisterEvents(self, handle: int, types: int, _event_set: str) -> None:
        assert types == pynvml.nvmlEventTypeXidCriticalError
        self.registered.append(handle)

    def nvmlEventSetWait(self, _event_set: str, _timeout_ms: int) -> SimpleNamespace:
        if not self.events:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        return self.events.pop(0)

    def _answer(self, handle: int, name: str, *args: Any, default: Any = None) -> Any:
        self._check()
        table = self.devices[handle]
        if name not in table:
            if default is not None:
                return default
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        answer = table[name]
        if isinstance(answer, Err):
            raise pynvml.NVMLError(answer.code)
        if callable(answer):
            return answer(*args)
        return answer

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if not name.startswith("nvmlDevice"):
            raise AttributeError(name)

        def call(handle: int, *args: Any, **kwargs: Any) -> Any:
            return self._answer(handle, name, handle, *args, *kwargs.values())
        return call


class TableDescriber(ProcessDescriber):
    """The process table of the captured host (those pids do not exist here)."""

    def describe(self, pid: int) -> tuple[str, str, str, str]:
        return {11327: ("memhog", "", "", ""), 11328: ("memhog", "", "", ""),
                11345: ("gpu_burn", "h100-burn", "0", "0")}.get(pid, ("", "", "", ""))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_reader(nvml: FakeNvml, clock: Clock | None = None) -> NvmlReader:
    return NvmlReader(nvml, describer=TableDescriber(), clock=clock or Clock())


def test_reader_reproduces_the_h100_recording():
    with open(FIXTURES / "h100-load.json", encoding="utf-8") as fh:
        recorded = json.load(fh)["snapshots"][0]
    snap = make_reader(FakeNvml([h100_raw()])).read()
    assert (snap.driver_version, snap.cuda_version) == ("590.48.01", "13.1")
    assert snap.failures == []
    assert snap.gpus == [gpu_reading_from_dict(recorded["gpus"][0])]


def test_unsupported_fields_stay_none_without_errors():
    raw = h100_raw()
    for name in ("nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows",
                 "nvmlDeviceGetViolationStatus", "nvmlDeviceGetTotalEnergyConsumption"):
        del raw[name]
    raw["nvmlDeviceGetSupportedClocksEventReasons"] = Err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    raw["nvmlDeviceGetSupportedClocksThrottleReasons"] = 0x1FF & ~0x100
    raw["nvmlDeviceGetCurrentClocksEventReasons"] = 0x4
    gpu = make_reader(FakeNvml([raw])).read().gpus[0]
    assert gpu.ecc_corrected_errors is None and gpu.remapped_rows_pending is None
    assert gpu.throttled_seconds is None and gpu.energy_joules is None
    assert gpu.fan_speed_ratio is None
    assert gpu.field_errors == {}
    assert gpu.throttle_reasons is not None
    assert "display_clock_setting" not in gpu.throttle_reasons  # old-driver fallback mask
    assert gpu.throttle_reasons["sw_power_cap"] is True


def test_memory_info_falls_back_to_v1():
    raw = h100_raw()

    def memory(_h: int, version: int | None = None) -> SimpleNamespace:
        if version is not None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return SimpleNamespace(used=1, free=2, total=3)
    raw["nvmlDeviceGetMemoryInfo"] = memory
    gpu = make_reader(FakeNvml([raw])).read().gpus[0]
    assert (gpu.memory_used_bytes, gpu.memory_free_bytes, gpu.memory_total_bytes) == (1, 2, 3)


def test_field_error_is_recorded_and_the_rest_read():
    raw = h100_raw()
    raw["nvmlDeviceGetComputeRunningProcesses"] = Err(pynvml.NVML_ERROR_NO_PERMISSION)
    raw["nvmlDeviceGetPowerUsage"] = Err(pynvml.NVML_ERROR_UNKNOWN)
    gpu = make_reader(FakeNvml([raw])).read().gpus[0]
    assert gpu.processes is None and gpu.power_watts is None
    assert gpu.field_errors == {"processes": "no_permission", "power": "unknown"}
    assert gpu.temperature_celsius == 59


def test_lost_gpu_does_not_hide_the_other():
    lost = h100_raw()
    lost["nvmlDeviceGetUUID"] = "GPU-lost"
    nvml = FakeNvml([h100_raw(), lost])
    reader = make_reader(nvml)
    assert len(reader.read().gpus) == 2
    lost["nvmlDeviceGetUtilizationRates"] = Err(pynvml.NVML_ERROR_GPU_IS_LOST)
    snap = reader.read()
    assert [g.index for g in snap.gpus] == [0]
    assert snap.failures == [GpuFailure(1, "gpu_is_lost", "GPU-lost")]
    lost["nvmlDeviceGetHandleByIndex"] = Err(pynvml.NVML_ERROR_GPU_IS_LOST)
    snap = reader.read()
    assert snap.failures == [GpuFailure(1, "gpu_is_lost", "GPU-lost")]  # uuid remembered
    assert [g.uuid for g in snap.gpus] == ["GPU-00000000-0000-0000-0000-000000000000"]


def test_driver_reload_reinitialises_at_next_read():
    nvml = FakeNvml([h100_raw()])
    reader = make_reader(nvml)
    reader.read()
    nvml.global_error = pynvml.NVML_ERROR_UNINITIALIZED
    with pytest.raises(GpuUnavailable) as caught:
        reader.read()
    assert caught.value.reason == "uninitialized"
    assert nvml.calls == {"nvmlInit": 1, "nvmlShutdown": 1}
    nvml.global_error = None
    assert len(reader.read().gpus) == 1
    assert nvml.calls["nvmlInit"] == 2


def test_other_nvml_failure_is_reported_not_raised():
    nvml = FakeNvml([h100_raw()])
    reader = make_reader(nvml)
    reader.read()
    nvml.global_error = pynvml.NVML_ERROR_UNKNOWN
    with pytest.raises(GpuUnavailable, match="unknown"):
        reader.read()
    nvml.global_error = None
    assert len(reader.read().gpus) == 1
    assert nvml.calls == {"nvmlInit": 1}  # not a driver reload: no re-initialisation


def test_failed_init_backs_off_exponentially():
    nvml = FakeNvml([h100_raw()])
    nvml.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    clock = Clock()
    reader = NvmlReader(nvml, clock=clock, backoff_initial_seconds=1.0, backoff_max_seconds=3.0)
    attempts = []
    for _ in range(12):
        with pytest.raises(GpuUnavailable, match="driver_not_loaded"):
            reader.read()
        attempts.append(nvml.calls["nvmlInit"])
        clock.now += 0.5
    # retries after 1 s, then 2 s, then capped at 3 s: at t=0, 1, 3, 6 (reads every 0.5 s)
    assert attempts == [1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3]
    nvml.init_error = None
    clock.now += 3.0
    assert len(reader.read().gpus) == 1


def test_xid_events_after_init_and_again_after_reinit():
    nvml = FakeNvml([h100_raw(), h100_raw()])
    reader = make_reader(nvml)
    assert reader.wait_xid_events(0.01) == []  # not initialised: waits, returns nothing
    assert "nvmlEventSetCreate" not in nvml.calls
    reader.read()
    xid = pynvml.nvmlEventTypeXidCriticalError
    nvml.events = [SimpleNamespace(eventType=xid, eventData=79, device=1),
                   SimpleNamespace(eventType=xid, eventData=48, device=0)]
    uuid = "GPU-00000000-0000-0000-0000-000000000000"
    assert reader.wait_xid_events(0.01) == [XidEvent(1, 79, uuid), XidEvent(0, 48, uuid)]
    assert nvml.registered == [0, 1]
    nvml.global_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(GpuUnavailable):
        reader.read()
    nvml.global_error = None
    reader.read()
    nvml.events = [SimpleNamespace(eventType=xid, eventData=31, device=0)]
    assert reader.wait_xid_events(0.01) == [XidEvent(0, 31, uuid)]
    assert nvml.calls["nvmlEventSetCreate"] == 2  # registered again after the re-init
    assert nvml.calls["nvmlEventSetFree"] == 1


def test_sample_memory_only_when_initialised():
    nvml = FakeNvml([h100_raw()])
    reader = make_reader(nvml)
    assert reader.sample_memory() == {}
    reader.read()
    assert reader.sample_memory() == {0: 20780679168}


def test_error_reasons_are_bounded_names():
    assert nvml_error_reason(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)) == "gpu_is_lost"
    assert nvml_error_reason(pynvml.NVMLError(12345)) == "nvml_error_12345"
    assert nvml_error_reason(ValueError()) == "error"


def test_process_describer_reads_run_and_rank_from_the_environment():
    env = {**os.environ, "TUNEWATCH_RUN": "run-7", "RANK": "3", "LOCAL_RANK": "1"}
    code = "import sys, time; print('ready', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        describer = ProcessDescriber()
        name, run, rank, local_rank = describer.describe(child.pid)
        assert name.startswith("python")
        assert (run, rank, local_rank) == ("run-7", "3", "1")
        assert describer.describe(child.pid) == (name, run, rank, local_rank)
    finally:
        child.kill()
        child.communicate()
    assert ProcessDescriber().describe(child.pid) == ("", "", "", "")


@contextlib.contextmanager
def _searchable_by_others(*paths: Path) -> Iterator[None]:
    """Let other users search (not list) every directory on the way to `paths` for the
    length of the block, restoring each mode after: a checkout under a private `mktemp -d`
    must still be importable by the unprivileged child. Only the others' execute bit
    changes, only where it was missing."""
    opened: dict[Path, int] = {}
    for path in paths:
        for directory in [path.resolve(), *path.resolve().parents]:
            mode = directory.stat().st_mode
            if directory not in opened and not mode & stat.S_IXOTH:
                opened[directory] = stat.S_IMODE(mode)
    try:
        for directory, mode in opened.items():
            directory.chmod(mode | stat.S_IXOTH)
        yield
    finally:
        for directory, mode in opened.items():
            directory.chmod(mode)


def test_process_describer_without_access_keeps_the_name(repo_root: Path):
    """Another user's environment is unreadable (AccessDenied): name kept, run/rank empty."""
    code = ("from exporters.collectors.gpu.processes import ProcessDescriber; "
            "print(repr(ProcessDescriber().describe(1)))")
    command = [sys.executable, "-c", code]
    access: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: cannot drop privileges to be denied")
        access = _searchable_by_others(repo_root, Path(sys.prefix),
                                       Path(sys.executable).resolve())
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    with access:
        done = subprocess.run(command, cwd=repo_root, capture_output=True, text=True,
                              check=False, env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert done.returncode == 0, done.stderr
    name, run, rank, local_rank = eval(done.stdout)
    assert name != ""
    assert (run, rank, local_rank) == ("", "", "")


def test_real_nvml_on_this_machine():
    reader = NvmlReader()
    try:
        snap = reader.read()
    except GpuUnavailable as err:
        if not Path("/proc/driver/nvidia").exists():
            assert err.reason == "library_not_found"  # no driver here: what nvmlInit raises
        else:
            pytest.fail(f"NVML unavailable on a host with the NVIDIA driver: {err.reason}")
    else:
        assert snap.gpus and all(g.uuid.startswith(("GPU-", "MIG-")) for g in snap.gpus)
    finally:
        reader.close()
