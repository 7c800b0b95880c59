"""Readings -> metric families: the pure conversion, on recorded H100 and consumer readings.

The fixtures (tests/fixtures/gpu, README there) carry real H100 values from
nvidia_gpu_exporter's capture, so these tests pin units and names against numbers a real
board produced; the consumer fixture pins what must be omitted on GeForce boards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from services import promtool_check_metrics

from exporters.collectors.gpu.collector import GpuCollector
from exporters.collectors.gpu.families import (
    availability_families,
    peak_family,
    snapshot_families,
)
from exporters.collectors.gpu.readings import GpuSnapshot, GpuUnavailable
from exporters.collectors.gpu.recorded import (
    RecordedReader,
    recording_from_dict,
    snapshot_from_dict,
    snapshot_to_dict,
)

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"
H100_UUID = "GPU-00000000-0000-0000-0000-000000000000"
RTX4090_UUID = "GPU-4090a1b2-c3d4-e5f6-0718-293a4b5c6d7e"
RTX3090_UUID = "GPU-3090f9e8-d7c6-b5a4-9382-716051423324"


def load_snapshots(name: str) -> list[GpuSnapshot | GpuUnavailable]:
    with open(FIXTURES / name, encoding="utf-8") as fh:
        return recording_from_dict(json.load(fh), name).snapshots


def snapshot(name: str, index: int = 0) -> GpuSnapshot:
    snap = load_snapshots(name)[index]
    assert isinstance(snap, GpuSnapshot)
    return snap


def samples(families: list[Metric]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


def value(families: list[Metric], name: str, **labels: str) -> float:
    return samples(families)[(name, frozenset(labels.items()))]


def names(families: list[Metric]) -> set[str]:
    return {s.name for f in families for s in f.samples}


def gpu_names(families: list[Metric], gpu: str) -> set[str]:
    return {s.name for f in families for s in f.samples if s.labels.get("gpu") == gpu}


@pytest.fixture(scope="module")
def h100() -> list[Metric]:
    return snapshot_families(snapshot("h100-load.json"), max_processes=16)


H100 = {"gpu": "0", "uuid": H100_UUID}


@pytest.mark.parametrize(("name", "expected"), [
    ("tunewatch_gpu_utilization_ratio", 1.0),
    ("tunewatch_gpu_memory_utilization_ratio", 0.11),
    ("tunewatch_gpu_memory_used_bytes", 20780679168),
    ("tunewatch_gpu_memory_free_bytes", 64238911488),
    ("tunewatch_gpu_memory_total_bytes", 85520809984),
    ("tunewatch_gpu_temperature_celsius", 59),
    ("tunewatch_gpu_temperature_slowdown_celsius", 87),
    ("tunewatch_gpu_temperature_shutdown_celsius", 90),
    ("tunewatch_gpu_power_watts", 631.95),
    ("tunewatch_gpu_power_limit_watts", 700),
    ("tunewatch_gpu_energy_joules_total", 86112345.678),
    ("tunewatch_gpu_sm_clock_hz", 1.98e9),
    ("tunewatch_gpu_memory_clock_hz", 2.619e9),
    ("tunewatch_gpu_pcie_link_generation", 5),
    ("tunewatch_gpu_pcie_link_generation_max", 5),
    ("tunewatch_gpu_pcie_link_width", 16),
    ("tunewatch_gpu_pcie_link_width_max", 16),
    ("tunewatch_gpu_ecc_corrected_errors_total", 0),
    ("tunewatch_gpu_ecc_uncorrected_errors_total", 0),
    ("tunewatch_gpu_remapped_rows_correctable", 0),
    ("tunewatch_gpu_remapped_rows_pending", 0),
    ("tunewatch_gpu_remapped_rows_failure", 0),
    ("tunewatch_gpu_up", 1),
    ("tunewatch_gpu_compute_processes", 3),
    ("tunewatch_gpu_compute_processes_unlisted", 0),
    ("tunewatch_gpu_memory_used_peak_bytes", 20780679168),
])
def test_h100_values_in_base_units(h100: list[Metric], name: str, expected: float):
    assert value(h100, name, **H100) == pytest.approx(expected)


def test_h100_types_follow_the_contract(h100: list[Metric]):
    types = {f.name: f.type for f in h100}
    assert types["tunewatch_gpu_energy_joules"] == "counter"
    assert types["tunewatch_gpu_ecc_corrected_errors"] == "counter"
    assert types["tunewatch_gpu_throttled_seconds"] == "counter"
    assert types["tunewatch_gpu_memory_used_bytes"] == "gauge"
    assert types["tunewatch_gpu"] == "info"


def test_h100_has_no_fan_and_no_unrecorded_violation_policies(h100: list[Metric]):
    assert "tunewatch_gpu_fan_speed_ratio" not in names(h100)
    reasons = {s.labels["reason"] for f in h100 for s in f.samples
               if s.name == "tunewatch_gpu_throttled_seconds_total"}
    assert reasons == {"power_cap", "thermal", "sync_boost"}


def test_h100_throttle_reasons_all_supported_none_active(h100: list[Metric]):
    active = {s.labels["reason"]: s.value for f in h100 for s in f.samples
              if s.name == "tunewatch_gpu_throttle_reason_active"}
    assert len(active) == 9  # supported mask 511 in the capture
    assert set(active.values()) == {0.0}
    assert "hw_thermal_slowdown" in active


def test_h100_info_labels(h100: list[Metric]):
    info = [s for f in h100 for s in f.samples if s.name == "tunewatch_gpu_info"]
    assert [s.labels for s in info] == [{
        "gpu": "0", "uuid": H100_UUID, "name": "NVIDIA H100 80GB HBM3",
        "driver_version": "590.48.01", "cuda_version": "13.1",
    }]
    assert info[0].value == 1.0


def test_h100_processes_largest_first_with_run_and_rank(h100: list[Metric]):
    procs = [s for f in h100 for s in f.samples
             if s.name == "tunewatch_gpu_process_memory_used_bytes"]
    assert [s.labels["pid"] for s in procs] == ["11345", "11327", "11328"]
    burn = procs[0]
    assert burn.value == 16452157440
    assert burn.labels == {**H100, "pid": "11345", "process": "gpu_burn", "run": "h100-burn",
                           "rank": "0", "local_rank": "0"}
    assert procs[1].labels["run"] == ""


@pytest.mark.parametrize(("cap", "listed"), [(2, ["11345", "11327"]), (1, ["11345"]), (0, [])])
def test_process_cap_counts_the_overflow(cap: int, listed: list[str]):
    families = snapshot_families(snapshot("h100-load.json"), max_processes=cap)
    pids = [s.labels["pid"] for f in families for s in f.samples
            if s.name == "tunewatch_gpu_process_memory_used_bytes"]
    assert pids == listed
    assert value(families, "tunewatch_gpu_compute_processes_unlisted", **H100) == 3 - len(listed)
    assert value(families, "tunewatch_gpu_compute_processes", **H100) == 3


def test_process_without_memory_reading_is_counted_not_listed():
    snap = snapshot("h100-load.json")
    snap.gpus[0].processes[0].used_memory_bytes = None  # WDDM / container: NVML gives none
    families = snapshot_families(snap, max_processes=16)
    pids = {s.labels["pid"] for f in families for s in f.samples
            if s.name == "tunewatch_gpu_process_memory_used_bytes"}
    assert pids == {"11328", "11345"}
    assert value(families, "tunewatch_gpu_compute_processes_unlisted", **H100) == 1


CONSUMER_UNSUPPORTED = {
    "tunewatch_gpu_ecc_corrected_errors_total",
    "tunewatch_gpu_ecc_uncorrected_errors_total",
    "tunewatch_gpu_remapped_rows_correctable",
    "tunewatch_gpu_remapped_rows_uncorrectable",
    "tunewatch_gpu_remapped_rows_pending",
    "tunewatch_gpu_remapped_rows_failure",
    "tunewatch_gpu_throttled_seconds_total",
}


def test_consumer_unsupported_fields_are_omitted_not_zero():
    families = snapshot_families(snapshot("consumer-4090-3090.json"), max_processes=16)
    assert not CONSUMER_UNSUPPORTED & names(families)
    assert {f.name for f in families}.isdisjoint(
        {"tunewatch_gpu_ecc_corrected_errors", "tunewatch_gpu_remapped_rows_pending"})
    for gpu in ("0", "1"):
        assert "tunewatch_gpu_fan_speed_ratio" in gpu_names(families, gpu)
        assert "tunewatch_gpu_energy_joules_total" in gpu_names(families, gpu)
    rtx4090 = {"gpu": "0", "uuid": RTX4090_UUID}
    assert value(families, "tunewatch_gpu_fan_speed_ratio", **rtx4090) == 0.64
    assert value(families, "tunewatch_gpu_throttle_reason_active", **rtx4090,
                 reason="sw_power_cap") == 1
    assert ("tunewatch_gpu_throttle_reason_active",
            frozenset({**rtx4090, "reason": "display_clock_setting"}.items())) \
        not in samples(families)


def test_consumer_process_list_failure_omits_only_that_gpu():
    families = snapshot_families(snapshot("consumer-4090-3090.json"), max_processes=16)
    assert "tunewatch_gpu_compute_processes" in gpu_names(families, "0")
    assert "tunewatch_gpu_compute_processes" not in gpu_names(families, "1")
    assert "tunewatch_gpu_memory_used_bytes" in gpu_names(families, "1")


def test_lost_gpu_is_down_and_the_other_still_published():
    families = snapshot_families(snapshot("consumer-4090-3090.json", 1), max_processes=16)
    assert value(families, "tunewatch_gpu_up", gpu="1", uuid=RTX3090_UUID) == 0
    assert value(families, "tunewatch_gpu_up", gpu="0", uuid=RTX4090_UUID) == 1
    assert gpu_names(families, "1") == {"tunewatch_gpu_up"}
    assert value(families, "tunewatch_gpu_memory_used_bytes", gpu="0",
                 uuid=RTX4090_UUID) == 22548578304
    assert value(families, "tunewatch_gpu_devices") == 2


def test_peak_is_the_higher_of_sampler_and_read():
    gpus = snapshot("consumer-4090-3090.json").gpus
    fams = peak_family(gpus, {0: 23622320128, 1: 1})
    assert value(fams, "tunewatch_gpu_memory_used_peak_bytes", gpu="0",
                 uuid=RTX4090_UUID) == 23622320128
    assert value(fams, "tunewatch_gpu_memory_used_peak_bytes", gpu="1",
                 uuid=RTX3090_UUID) == 9663676416


def test_availability_families():
    assert samples(availability_families(None)) == {("tunewatch_gpu_nvml_up", frozenset()): 1.0}
    down = samples(availability_families("library_not_found"))
    assert down == {
        ("tunewatch_gpu_nvml_up", frozenset()): 0.0,
        ("tunewatch_gpu_nvml_unavailable", frozenset({("reason", "library_not_found")})): 1.0,
    }


def test_recording_round_trip_and_unknown_keys():
    snap = snapshot("h100-load.json")
    assert snapshot_from_dict(json.loads(json.dumps(snapshot_to_dict(snap)))) == snap
    bad = snapshot_to_dict(snap)
    bad["gpus"][0]["temprature_celsius"] = 1
    with pytest.raises(ValueError, match="temprature_celsius"):
        snapshot_from_dict(bad)


def test_recording_needs_a_snapshot():
    with pytest.raises(ValueError, match="snapshots"):
        recording_from_dict({"snapshots": []})


# --------------------------------------------------------------------------- promtool


def exposition(reader: RecordedReader, scrapes: int) -> str:
    """Text of the last of `scrapes` scrapes of a registry holding only the GPU collector."""
    collector = GpuCollector(reader, max_processes=2, read_timeout_seconds=5.0)
    collector.xids.record(reader.wait_xid_events(0.0))  # as the XID thread would
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        texts = [generate_latest(registry).decode() for _ in range(scrapes)]
    finally:
        collector.close()
    return texts[-1]


@pytest.mark.parametrize(("fixture", "scrapes", "expect"), [
    ("h100-load.json", 1, "tunewatch_gpu_process_memory_used_bytes{"),
    ("consumer-4090-3090.json", 1, "tunewatch_gpu_fan_speed_ratio{"),
    ("consumer-4090-3090.json", 2, 'tunewatch_gpu_read_errors_total{gpu="1",reason="gpu_is_lost"}'),
    ("consumer-4090-3090.json", 3, 'tunewatch_gpu_nvml_unavailable{reason="driver_not_loaded"}'),
    ("no-nvml.json", 1, 'tunewatch_gpu_nvml_unavailable{reason="library_not_found"}'),
])
def test_promtool_finds_nothing(fixture: str, scrapes: int, expect: str):
    text = exposition(RecordedReader.from_file(FIXTURES / fixture), scrapes)
    assert expect in text
    assert promtool_check_metrics(text) == ""
