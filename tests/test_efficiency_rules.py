"""The efficiency rules against a hand computation, on a live Prometheus.

Why live: the promtool tests (prometheus/tests/efficiency.rules.test.yml) check the rules on
series written by hand; here the series come from the real processes (the host exporter
replaying the recorded H100 readings, whose `gpu_burn` process carries a run, and the
training metrics of that run with a known parameter count and a steadily growing token
count), so the labels the rules join on are the ones the exporters really publish. The
expected MFU is computed in this file from the fixture's board name, the peak table, the
parameter count and the tokens rate Prometheus recorded, and must equal the rule's value.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import Prometheus, Tunewatch, free_port

from exporters.collectors.gpu.peak_flops import PRECISION, PeakFlopsTable
from exporters.training import TrainingMetrics, serve

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
GPU_FIXTURE = REPO / "tests" / "fixtures" / "gpu" / "h100-load.json"
RULES = REPO / "prometheus" / "rules"
EXPORTER_JOB = "efficiency-exporter"
TRAINING_JOB = "efficiency-training"
PARAMETERS = 7_241_732_096  # a 7B model's count, as count_parameters() would give it
TRAINABLE = 41_943_040  # its LoRA adapters
TOKENS_PER_SECOND = 3000.0  # the pace the token counter is advanced at
ADVANCE_SECONDS = 0.1  # how often the counter is advanced
FLOPS_PER_PARAMETER_AND_TOKEN = 6  # forward 2 + backward 4 (attention left out)
WINDOW = "30s"  # recent raw samples of the recorded series, with their timestamps


def fixture_run() -> tuple[str, str, str]:
    """(board name, GPU uuid, run) of the recorded GPU that holds a run's process."""
    gpus = json.loads(GPU_FIXTURE.read_text())["snapshots"][0]["gpus"]
    for gpu in gpus:
        for process in gpu.get("processes") or []:
            if process["run"] and process["used_memory_bytes"]:
                return gpu["name"], gpu["uuid"], process["run"]
    raise AssertionError(f"{GPU_FIXTURE} has no GPU process with a run")


class TokenPacer:
    """Advances the training metrics' token count at TOKENS_PER_SECOND in a thread."""

    def __init__(self, metrics: TrainingMetrics) -> None:
        self.metrics = metrics
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        step = 0
        while not self.stopping.wait(ADVANCE_SECONDS):
            step += 1
            tokens = TOKENS_PER_SECOND * (time.monotonic() - self.started)
            self.metrics.record_step(step, tokens=tokens)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


@pytest.fixture
def efficiency_stack(prometheus: Prometheus, tmp_path: Path) -> Iterator[str]:
    """The host exporter on the H100 recording and a run's training metrics, scraped by the
    session Prometheus with the training and efficiency rules loaded; yields the run."""
    _, _, run = fixture_run()
    config = tmp_path / "tunewatch.yml"
    config.write_text("exporter:\n  collector_timeout_seconds: 3.0\n")
    exporter = Tunewatch("exporter", tmp_path).start(
        ["exporter", "--config", str(config)],
        env={"TUNEWATCH_EXPORTER__GPU_READINGS_FILE": str(GPU_FIXTURE)})
    metrics = TrainingMetrics(run=run, model_name="seven-b")
    metrics.set_model_size(PARAMETERS, TRAINABLE)
    metrics.set_state("training")
    server = serve(metrics, f"127.0.0.1:{free_port()}")
    pacer = TokenPacer(metrics)
    previous_rules = list(prometheus.rule_files)
    try:
        prometheus.set_rule_files([RULES / "training.rules.yml", RULES / "efficiency.rules.yml"])
        labels = {"host": "h1", "role": "training"}
        prometheus.add_target(EXPORTER_JOB, exporter.address, labels)
        prometheus.add_target(TRAINING_JOB, f"127.0.0.1:{server.port}", labels)
        prometheus.wait_up(EXPORTER_JOB)
        prometheus.wait_up(TRAINING_JOB)
        yield run
    finally:
        prometheus.remove_target(EXPORTER_JOB)
        prometheus.remove_target(TRAINING_JOB)
        prometheus.set_rule_files(previous_rules)
        pacer.stop()
        server.stop()
        exporter.stop()


def raw_samples(prometheus: Prometheus, selector: str) -> list[tuple[float, float]]:
    """The single series' raw (timestamp, value) samples of the last WINDOW."""
    result = prometheus.query(f"{selector}[{WINDOW}]")
    assert len(result) == 1, f"{selector}: {len(result)} series"
    return [(float(t), float(v)) for t, v in result[0]["values"]]


def seen_at(samples: list[tuple[float, float]], when: float) -> list[float]:
    """The values a rule evaluated at `when` may have read: the latest sample at or before
    it, and the one before (the two rule groups evaluate independently, so a sample written
    in the same millisecond may or may not have been visible)."""
    before = [v for t, v in samples if t <= when]
    return before[-2:]


def test_mfu_equals_the_hand_computation(prometheus: Prometheus, efficiency_stack: str):
    run = efficiency_stack
    board, uuid, _ = fixture_run()
    peak = PeakFlopsTable().lookup(board)
    assert peak is not None, f"{board} is not in the peak table"

    # The exporter publishes the board's peak beside the GPU's other readings.
    assert prometheus.wait_value(
        f'tunewatch_gpu_peak_flops{{job="{EXPORTER_JOB}",uuid="{uuid}",'
        f'precision="{PRECISION}"}}', lambda v: v > 0) == peak
    assert prometheus.wait_value(f'run:tunewatch_gpu_peak_flops:sum{{run="{run}"}}',
                                 lambda v: v > 0) == peak
    # Wait until a few MFU samples exist, then check the newest against its inputs.
    prometheus.wait_value(f'count_over_time(run:tunewatch_training_mfu:ratio{{run="{run}"}}'
                          f'[{WINDOW}])', lambda v: v >= 3, timeout=60)
    when, mfu = raw_samples(prometheus, f'run:tunewatch_training_mfu:ratio{{run="{run}"}}')[-1]
    rates = seen_at(raw_samples(prometheus, f'run:tunewatch_training_tokens:rate5m{{run="{run}"}}'),
                    when)
    assert rates, "no tokens rate recorded before the MFU sample"
    # Prometheus's rate over 5m of a counter younger than 5m underestimates its pace, never
    # more than it: the recorded rate lies in (0, TOKENS_PER_SECOND].
    assert all(0 < r <= TOKENS_PER_SECOND * 1.01 for r in rates), rates
    expected = [FLOPS_PER_PARAMETER_AND_TOKEN * PARAMETERS * r / peak for r in rates]
    assert any(mfu == pytest.approx(e, rel=1e-9) for e in expected), (mfu, expected)

    # Energy per token: the recording's energy counter does not move, so 0 J over the
    # tokens rate; the series exists because the run's GPU joined its energy counter.
    energy = raw_samples(prometheus,
                         f'run:tunewatch_training_energy_per_token:joules{{run="{run}"}}')
    assert energy[-1][1] == 0.0


def test_the_other_processes_of_the_gpu_belong_to_no_run(prometheus: Prometheus,
                                                        efficiency_stack: str):
    """The recording's memhog processes carry no run: only the run's own MFU exists, one."""
    run = efficiency_stack
    prometheus.wait_value(f'run:tunewatch_training_mfu:ratio{{run="{run}"}}', lambda v: v > 0,
                          timeout=60)
    runs: list[dict[str, Any]] = prometheus.query(
        f'run:tunewatch_gpu_peak_flops:sum * on (run) group_left () '
        f'group by (run) (tunewatch_gpu_process_memory_used_bytes{{job="{EXPORTER_JOB}"}})')
    assert [r["metric"]["run"] for r in runs] == [run]
