"""GpuCollector over time: unavailability, lost GPUs, XID counting, peak sampling, deadlines.

Readings come from RecordedReader fixtures that script a sequence of reads, memory samples
and XID batches; the hung reader below is a stand-in for an NVML call that never returns.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from exporters.collectors.gpu.collector import GpuCollector, create_collector
from exporters.collectors.gpu.nvml import NvmlReader
from exporters.collectors.gpu.peak_flops import BF16_DENSE_PEAK_FLOPS, PeakFlopsTable
from exporters.collectors.gpu.readings import GpuSnapshot, XidEvent
from exporters.collectors.gpu.recorded import RecordedReader, recording_from_dict
from exporters.collectors.gpu.trackers import PeakTracker, XidTracker
from tunewatch.core.config import ExporterConfig

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"
RTX4090 = {"gpu": "0", "uuid": "GPU-4090a1b2-c3d4-e5f6-0718-293a4b5c6d7e"}
RTX3090 = {"gpu": "1", "uuid": "GPU-3090f9e8-d7c6-b5a4-9382-716051423324"}
H100 = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000"}
H100_BOARD = "NVIDIA H100 80GB HBM3"
PEAK = "tunewatch_gpu_peak_flops"
UNKNOWN_BOARDS = "tunewatch_gpu_peak_flops_unknown_boards"


def scrape(collector: GpuCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    families: list[Metric] = list(collector.collect())
    return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def make() -> Iterator[Callable[..., GpuCollector]]:
    made: list[GpuCollector] = []

    def factory(reader: object, **kwargs: object) -> GpuCollector:
        collector = GpuCollector(reader, **kwargs)  # type: ignore[arg-type]
        made.append(collector)
        return collector
    yield factory
    for collector in made:
        collector.close()


def recorded(name: str) -> RecordedReader:
    return RecordedReader.from_file(FIXTURES / name)


def test_unavailable_reports_reason_and_logs_once(make, caplog: pytest.LogCaptureFixture):
    collector = make(recorded("no-nvml.json"))
    with caplog.at_level(logging.INFO, logger="exporters.collectors.gpu"):
        first, second = scrape(collector), scrape(collector)
    expected = {key("tunewatch_gpu_nvml_up"): 0.0,
                key("tunewatch_gpu_nvml_unavailable", reason="library_not_found"): 1.0}
    assert first == expected and second == expected
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "library_not_found" in warnings[0].getMessage()


def test_sequence_lost_gpu_driver_unload_and_recovery(make, caplog: pytest.LogCaptureFixture):
    collector = make(recorded("consumer-4090-3090.json"))
    errors = "tunewatch_gpu_read_errors_total"
    first = scrape(collector)
    assert first[key("tunewatch_gpu_nvml_up")] == 1
    assert first[key(errors, gpu="1", reason="no_permission")] == 1  # process list denied
    lost = scrape(collector)
    assert lost[key("tunewatch_gpu_up", **RTX3090)] == 0
    assert lost[key("tunewatch_gpu_up", **RTX4090)] == 1
    assert key("tunewatch_gpu_utilization_ratio", **RTX4090) in lost
    assert lost[key(errors, gpu="1", reason="gpu_is_lost")] == 1
    with caplog.at_level(logging.INFO, logger="exporters.collectors.gpu"):
        down = scrape(collector)
        back = scrape(collector)
    assert down[key("tunewatch_gpu_nvml_up")] == 0
    assert down[key("tunewatch_gpu_nvml_unavailable", reason="driver_not_loaded")] == 1
    assert down[key(errors, gpu="1", reason="gpu_is_lost")] == 1  # counters survive outages
    assert key("tunewatch_gpu_up", **RTX4090) not in down
    assert back[key("tunewatch_gpu_nvml_up")] == 1
    assert back[key("tunewatch_gpu_up", **RTX3090)] == 1
    assert back[key(errors, gpu="1", reason="no_permission")] == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("driver_not_loaded" in m for m in messages)
    assert any("available again" in m for m in messages)


def test_xid_tracker_counts_and_stamps():
    now = [100.0]
    tracker = XidTracker(clock=lambda: now[0])
    tracker.record([XidEvent(0, 79, "GPU-a"), XidEvent(0, 79, "GPU-a")])
    now[0] = 250.0
    tracker.record([XidEvent(1, 31, "GPU-b")])
    got = {(s.name, s.labels["gpu"], s.labels["xid"]): s.value
           for f in tracker.families() for s in f.samples}
    assert got == {
        ("tunewatch_gpu_xid_errors_total", "0", "79"): 2,
        ("tunewatch_gpu_xid_last_timestamp_seconds", "0", "79"): 100.0,
        ("tunewatch_gpu_xid_errors_total", "1", "31"): 1,
        ("tunewatch_gpu_xid_last_timestamp_seconds", "1", "31"): 250.0,
    }
    assert XidTracker().families() == []


def test_xid_thread_counts_recorded_events(make):
    reader = recorded("consumer-4090-3090.json")
    collector = make(reader, clock=lambda: 1234.5)
    xid79 = key("tunewatch_gpu_xid_errors_total", **RTX3090, xid="79")
    scrape(collector)  # the first scrape starts the XID thread
    wait_for(lambda: reader.progress[2] == 3)  # all three recorded batches handed over
    wait_for(lambda: scrape(collector).get(xid79) == 2)
    got = scrape(collector)
    assert got[key("tunewatch_gpu_xid_errors_total", **RTX3090, xid="79")] == 2
    assert got[key("tunewatch_gpu_xid_errors_total", **RTX4090, xid="31")] == 1
    assert got[key("tunewatch_gpu_xid_last_timestamp_seconds", **RTX4090, xid="31")] == 1234.5


def test_peak_tracker_resets_on_take():
    peaks = PeakTracker()
    peaks.observe({0: 5, 1: 7})
    peaks.observe({0: 9, 1: 3})
    peaks.observe({0: 6})
    assert peaks.take() == {0: 9, 1: 7}
    assert peaks.take() == {}
    peaks.observe({0: 1})
    assert peaks.take() == {0: 1}


def test_peak_sampler_sees_what_scrapes_miss(make):
    reader = recorded("consumer-4090-3090.json")
    collector = make(reader, sample_interval_seconds=0.005)
    peak = "tunewatch_gpu_memory_used_peak_bytes"
    collector.start()
    wait_for(lambda: reader.progress[1] >= 3)  # the 23.6 GB sample has been seen
    first = scrape(collector)
    assert first[key("tunewatch_gpu_memory_used_bytes", **RTX4090)] == 21474836480
    assert first[key(peak, **RTX4090)] == 23622320128
    samples_before = reader.progress[1]
    wait_for(lambda: reader.progress[1] >= samples_before + 2)
    second = scrape(collector)  # the lost-GPU read: 22.5 GB used, the burst is history
    assert second[key(peak, **RTX4090)] == 22548578304
    assert key(peak, **RTX3090) not in second


class HungReader:
    """Stand-in for an NVML call that does not return until released."""

    def __init__(self, inner: RecordedReader) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.calls = 0

    def read(self) -> GpuSnapshot:
        self.calls += 1
        self.release.wait()
        return self.inner.read()

    def sample_memory(self) -> dict[int, int]:
        return {}

    def wait_xid_events(self, timeout_seconds: float) -> list[XidEvent]:
        self.release.wait(timeout_seconds)
        return []

    def close(self) -> None:
        self.release.set()


def test_hung_read_is_bounded_and_not_piled_up(make):
    reader = HungReader(recorded("h100-load.json"))
    collector = make(reader, read_timeout_seconds=0.2)
    started = time.monotonic()
    first = scrape(collector)
    assert 0.15 < time.monotonic() - started < 1.0
    assert first == {key("tunewatch_gpu_nvml_up"): 0.0,
                     key("tunewatch_gpu_nvml_unavailable", reason="timeout"): 1.0}
    started = time.monotonic()
    assert scrape(collector) == first
    assert time.monotonic() - started < 0.1  # fails fast while the old call still hangs
    assert reader.calls == 1
    reader.release.set()
    wait_for(lambda: key("tunewatch_gpu_nvml_up") in (got := scrape(collector))
             and got[key("tunewatch_gpu_nvml_up")] == 1.0)
    assert reader.calls == 2


def test_factory_serves_a_recording_from_the_config():
    cfg = ExporterConfig(gpu_max_processes=1, gpu_sample_interval_seconds=0.5,
                         collector_timeout_seconds=2.5,
                         gpu_readings_file=str(FIXTURES / "h100-load.json"))
    collector = create_collector(cfg)
    try:
        assert collector.name == "gpu"
        assert isinstance(collector.reader, RecordedReader)
        assert (collector.max_processes, collector.sample_interval_seconds) == (1, 0.5)
        assert collector.read_timeout_seconds == pytest.approx(2.0)
        got = scrape(collector)
        procs = [k for k in got if k[0] == "tunewatch_gpu_process_memory_used_bytes"]
        assert len(procs) == 1
        assert got[key("tunewatch_gpu_compute_processes_unlisted", gpu="0",
                       uuid="GPU-00000000-0000-0000-0000-000000000000")] == 2
    finally:
        collector.close()


def test_factory_uses_nvml_by_default():
    collector = create_collector(ExporterConfig())
    try:
        assert isinstance(collector.reader, NvmlReader)
        got = scrape(collector)
        if not Path("/proc/driver/nvidia").exists():
            assert got == {key("tunewatch_gpu_nvml_up"): 0.0,
                           key("tunewatch_gpu_nvml_unavailable", reason="library_not_found"): 1.0}
        else:
            assert got[key("tunewatch_gpu_nvml_up")] == 1.0
    finally:
        collector.close()


# --------------------------------------------------------------------------- peak FLOPS


def renamed(fixture: str, board: str) -> RecordedReader:
    """The fixture's readings with every GPU's board name replaced by `board`."""
    data = json.loads((FIXTURES / fixture).read_text())
    for snap in data["snapshots"]:
        for gpu in snap.get("gpus", []):
            gpu["name"] = board
    return RecordedReader(recording_from_dict(data, fixture))


def test_known_boards_publish_their_table_peak(make):
    got = scrape(make(recorded("consumer-4090-3090.json")))
    assert got[key(PEAK, precision="bf16", **RTX4090)] == BF16_DENSE_PEAK_FLOPS[
        "NVIDIA GeForce RTX 4090"]
    assert got[key(PEAK, precision="bf16", **RTX3090)] == BF16_DENSE_PEAK_FLOPS[
        "NVIDIA GeForce RTX 3090"]
    assert got[key(UNKNOWN_BOARDS)] == 0


def test_unknown_board_is_absent_counted_and_warned_once(make, caplog: pytest.LogCaptureFixture):
    board = "NVIDIA Imaginary X1"
    collector = make(renamed("consumer-4090-3090.json", board))
    with caplog.at_level(logging.WARNING, logger="exporters.collectors.gpu"):
        scrapes = [scrape(collector) for _ in range(4)]  # both, one lost, none, both
    assert [s.get(key(UNKNOWN_BOARDS)) for s in scrapes] == [2, 1, None, 2]
    assert not any(k[0] == PEAK for s in scrapes for k in s)
    warned = [r.getMessage() for r in caplog.records if "peak FLOPS" in r.getMessage()]
    assert len(warned) == 1 and repr(board) in warned[0]


def test_each_unknown_board_name_is_warned_once(make, caplog: pytest.LogCaptureFixture):
    data = json.loads((FIXTURES / "consumer-4090-3090.json").read_text())
    names = iter(["Board A", "Board B"] * len(data["snapshots"]))
    for snap in data["snapshots"]:
        for gpu in snap.get("gpus", []):
            gpu["name"] = next(names)
    collector = make(RecordedReader(recording_from_dict(data, "renamed")))
    with caplog.at_level(logging.WARNING, logger="exporters.collectors.gpu"):
        for _ in range(4):
            scrape(collector)
    warned = sorted(r.getMessage().split("'")[1] for r in caplog.records
                    if "peak FLOPS" in r.getMessage())
    assert warned == ["Board A", "Board B"]


def test_the_configured_peak_wins_over_the_table():
    override = BF16_DENSE_PEAK_FLOPS[H100_BOARD] * 0.75
    cfg = ExporterConfig(gpu_readings_file=str(FIXTURES / "h100-load.json"),
                         gpu_peak_flops={H100_BOARD: override})
    collector = create_collector(cfg)
    try:
        got = scrape(collector)
    finally:
        collector.close()
    assert got[key(PEAK, precision="bf16", **H100)] == override
    assert got[key(UNKNOWN_BOARDS)] == 0


def test_the_configuration_names_a_board_the_table_lacks(make):
    board = "NVIDIA Imaginary X1"
    collector = make(renamed("h100-load.json", board),
                     peak_flops=PeakFlopsTable({board: 2.5e14}))
    got = scrape(collector)
    assert got[key(PEAK, precision="bf16", **H100)] == 2.5e14
    assert got[key(UNKNOWN_BOARDS)] == 0
