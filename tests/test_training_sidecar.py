"""`tunewatch training-sidecar`: status files good, missing, broken, stale, replaced; queues."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from services import Tunewatch, free_port, http_get, promtool_check_metrics, wait_for

from exporters.training.status import parse_status, parse_timestamp, well_formed_line
from exporters.training.status_collector import StatusFileCollector
from tunewatch.core.config import QueueDir

T0 = 1_800_000_000.0
GOOD = {"status": "training", "current_step": 120, "total_steps": 600, "epoch": 0.4,
        "loss": 1.93, "eval_loss": 2.1, "learning_rate": 1e-4, "grad_norm": 0.8,
        "tokens_seen": 48211, "samples_seen": 960, "run": "r1", "model": "m1",
        "dataset": "d1", "regime": "thinking", "current_file": "batch_07.jsonl", "batch": 3,
        "batches_total": 12, "updated_at": T0 - 10, "unknown_field": [1, 2]}
CHAT = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> None:
    """Write-then-rename, as DESIGN asks writers to do (a new inode each time)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def scrape(collector: StatusFileCollector) -> tuple[str, dict]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "run"}
            values[(s.name, tuple(sorted(labels.items())))] = s.value
    return text, values


def values_only(text: str) -> list[float]:
    return [s.value for f in text_string_to_metric_families(text) for s in f.samples]


def state_of(values: dict) -> str:
    on = [dict(labels)["state"] for (name, labels), v in values.items()
          if name == "tunewatch_training_state" and v == 1]
    assert len(on) == 1, on
    return on[0]


def err(values: dict, reason: str) -> float:
    return values[("tunewatch_training_status_file_errors_total", (("reason", reason),))]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_good_status_file(tmp_path: Path, clock: Clock):
    path = tmp_path / "training_status.json"
    write(path, json.dumps(GOOD))
    text, v = scrape(StatusFileCollector(path, stale_after_seconds=300, clock=clock))
    assert state_of(v) == "training"
    assert v[("tunewatch_training_step", ())] == 120
    assert v[("tunewatch_training_max_steps", ())] == 600
    assert v[("tunewatch_training_loss", ())] == 1.93
    assert v[("tunewatch_training_eval_loss", ())] == 2.1
    assert v[("tunewatch_training_tokens_total", ())] == 48211
    assert v[("tunewatch_training_samples_total", ())] == 960
    assert v[("tunewatch_training_batch", ())] == 3
    assert v[("tunewatch_training_batches", ())] == 12
    assert v[("tunewatch_training_last_step_timestamp_seconds", ())] == T0 - 10
    assert v[("tunewatch_training_status_last_update_timestamp_seconds", ())] == T0 - 10
    assert v[("tunewatch_training_current_file_info", (("file", "batch_07.jsonl"),))] == 1
    assert v[("tunewatch_training_run_info", (("dataset", "d1"), ("model", "m1"),
                                              ("regime", "thinking")))] == 1
    assert 'run="r1"' in text
    assert all(err(v, r) == 0 for r in ("missing", "parse_error", "invalid_field"))
    assert promtool_check_metrics(text) == ""


def test_missing_file_is_unknown_and_counted_once(tmp_path: Path, clock: Clock):
    collector = StatusFileCollector(tmp_path / "nope.json", clock=clock)
    for _ in range(3):
        text, v = scrape(collector)
    assert state_of(v) == "unknown"
    assert err(v, "missing") == 1
    assert ("tunewatch_training_step", ()) not in v
    assert promtool_check_metrics(text) == ""


@pytest.mark.parametrize("broken, reason", [
    ('{"state": "training", "step": 13', "parse_error"),   # half-written
    ("\x00\x17garbage", "parse_error"),
    ("", "parse_error"),
    ("[1, 2, 3]", "not_an_object"),
])
def test_broken_file_keeps_last_good_values(tmp_path: Path, clock: Clock, broken: str,
                                            reason: str, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "training_status.json"
    write(path, json.dumps(GOOD))
    collector = StatusFileCollector(path, clock=clock)
    scrape(collector)
    write(path, broken)
    with caplog.at_level(logging.WARNING, logger="tunewatch.training.sidecar"):
        for _ in range(3):
            text, v = scrape(collector)
    assert err(v, reason) == 1  # once per file version, not per scrape
    assert v[("tunewatch_training_step", ())] == 120
    assert state_of(v) == "training"
    assert str(path) in caplog.text
    assert promtool_check_metrics(text) == ""


def test_nan_loss_is_counted_not_published(tmp_path: Path, clock: Clock):
    path = tmp_path / "training_status.json"
    write(path, json.dumps({**GOOD, "loss": 1.5}))
    collector = StatusFileCollector(path, clock=clock)
    scrape(collector)
    write(path, '{"state": "training", "step": 121, "loss": NaN, "grad_norm": Infinity}')
    text, v = scrape(collector)
    assert v[("tunewatch_training_loss", ())] == 1.5
    assert v[("tunewatch_training_nonfinite_loss_total", ())] == 1
    assert v[("tunewatch_training_step", ())] == 121
    assert not any(v != v or abs(v) == float("inf") for v in values_only(text))
    scrape(collector)
    assert scrape(collector)[1][("tunewatch_training_nonfinite_loss_total", ())] == 1


def test_wrong_field_types_are_ignored_and_counted(tmp_path: Path, clock: Clock):
    path = tmp_path / "training_status.json"
    write(path, json.dumps({"state": "exploding", "step": "many", "loss": 2.0,
                            "updated_at": "yesterday"}))
    _, v = scrape(StatusFileCollector(path, clock=clock))
    assert err(v, "invalid_field") == 1
    assert v[("tunewatch_training_loss", ())] == 2.0
    assert ("tunewatch_training_step", ()) not in v


def test_model_size_fields(tmp_path: Path, clock: Clock):
    """The optional parameter counts become the model size gauges; 1.5e9 is a whole number."""
    path = tmp_path / "training_status.json"
    write(path, json.dumps(GOOD))
    collector = StatusFileCollector(path, clock=clock)
    text, v = scrape(collector)
    assert "tunewatch_training_model_parameters{" not in text  # not given: absent, not 0
    write(path, json.dumps({**GOOD, "model_parameters": 1.5e9,
                            "model_trainable_parameters": 8_798_208}))
    text, v = scrape(collector)
    assert v[("tunewatch_training_model_parameters", ())] == 1.5e9
    assert v[("tunewatch_training_model_trainable_parameters", ())] == 8_798_208
    assert err(v, "invalid_field") == 0
    assert promtool_check_metrics(text) == ""


@pytest.mark.parametrize("bad", ["-1", "2.5", '"494M"', "true", "1" + "0" * 400, "[1]"])
def test_bad_model_size_is_a_problem(tmp_path: Path, clock: Clock, bad: str):
    """A count that is not a whole number >= 0 is ignored and counted as invalid_field (once
    per file version); the other fields of that version still apply, the last good count
    stays."""
    path = tmp_path / "training_status.json"
    write(path, json.dumps({**GOOD, "model_parameters": 1000}))
    collector = StatusFileCollector(path, clock=clock)
    scrape(collector)
    good = json.dumps({**GOOD, "current_step": 121})
    write(path, good[:-1] + f', "model_parameters": {bad}, "model_trainable_parameters": {bad}}}')
    for _ in range(2):
        text, v = scrape(collector)
    assert err(v, "invalid_field") == 1
    assert v[("tunewatch_training_step", ())] == 121
    assert v[("tunewatch_training_model_parameters", ())] == 1000
    assert "tunewatch_training_model_trainable_parameters{" not in text
    assert {p.split()[0] for p in parse_status(path.read_text()).problems} == {
        "model_parameters", "model_trainable_parameters"}


def test_stale_and_replaced_files(tmp_path: Path, clock: Clock):
    path = tmp_path / "training_status.json"
    write(path, json.dumps({**GOOD, "updated_at": T0}))
    collector = StatusFileCollector(path, stale_after_seconds=60, clock=clock)
    assert state_of(scrape(collector)[1]) == "training"
    clock.now = T0 + 61
    assert state_of(scrape(collector)[1]) == "stale"
    write(path, json.dumps({**GOOD, "current_step": 130, "updated_at": T0 + 60}))
    _, v = scrape(collector)
    assert state_of(v) == "training"
    assert v[("tunewatch_training_step", ())] == 130
    # A finished run does not go stale.
    write(path, json.dumps({"state": "completed", "step": 600, "updated_at": T0}))
    clock.now = T0 + 10_000
    _, v = scrape(collector)
    assert state_of(v) == "completed"
    # Deleted, then written again.
    path.unlink()
    assert state_of(scrape(collector)[1]) == "unknown"
    write(path, json.dumps({"status": "paused", "updated_at": clock.now}))
    _, v = scrape(collector)
    assert state_of(v) == "paused"
    assert err(v, "missing") == 1


def test_updated_at_formats():
    assert parse_timestamp(1_700_000_000) == 1_700_000_000
    assert parse_timestamp("1700000000.5") == 1_700_000_000.5
    assert parse_timestamp("2023-11-14T22:13:20Z") == 1_700_000_000
    assert parse_timestamp("2023-11-14T23:13:20+01:00") == 1_700_000_000
    assert parse_timestamp("2023-11-14T22:13:20") == 1_700_000_000  # naive is UTC
    assert parse_status('{"updated_at": "soon"}').problems == ["updated_at 'soon'"]


def test_queue_files_with_malformed_lines(tmp_path: Path, clock: Clock,
                                          caplog: pytest.LogCaptureFixture):
    high, low = tmp_path / "high", tmp_path / "low"
    high.mkdir()
    low.mkdir()
    good = json.dumps(CHAT)
    (high / "a.jsonl").write_text("\n".join([good, good, "", good]) + "\n")
    (high / "b.jsonl").write_text("\n".join([good, "{not json", json.dumps({"messages": []}),
                                             json.dumps({"messages": [
                                                 {"role": "user", "content": "only"}]})]))
    (low / "c.jsonl").write_text(good + "\n")
    (low / "ignored.txt").write_text("not a queue file")
    collector = StatusFileCollector(
        tmp_path / "missing.json", clock=clock,
        queue_dirs=[QueueDir(str(high), "high"), QueueDir(str(low), "low")])
    with caplog.at_level(logging.WARNING, logger="tunewatch.training.sidecar"):
        text, v = scrape(collector)
    p = (("priority", "high"),)
    assert v[("tunewatch_training_queue_files", p)] == 2
    assert v[("tunewatch_training_queue_examples", p)] == 4
    assert v[("tunewatch_training_queue_malformed_lines", p)] == 3
    assert v[("tunewatch_training_queue_malformed_files", p)] == 1
    assert v[("tunewatch_training_queue_examples", (("priority", "low"),))] == 1
    assert "b.jsonl" in caplog.text and "2, 3, 4" in caplog.text
    assert promtool_check_metrics(text) == ""
    (high / "b.jsonl").unlink()  # consumed
    _, v = scrape(collector)
    assert v[("tunewatch_training_queue_malformed_lines", p)] == 0
    assert v[("tunewatch_training_queue_files", p)] == 1


def test_chatml_line_rules():
    assert well_formed_line(json.dumps(CHAT))
    system = {"messages": [{"role": "system", "content": "s"}, *CHAT["messages"]]}
    assert well_formed_line(json.dumps(system))
    assert not well_formed_line(json.dumps({"messages": [{"role": "user", "content": 3},
                                                         {"role": "assistant", "content": "x"}]}))
    assert not well_formed_line(json.dumps({"messages": [{"role": "bot", "content": "x"}]}))
    assert not well_formed_line("[]")


def test_sidecar_command_scraped_by_prometheus(prometheus, tmp_path: Path, repo_root: Path):
    status = tmp_path / "status" / "training_status.json"
    status.parent.mkdir()
    write(status, json.dumps({**GOOD, "updated_at": "2099-01-01T00:00:00Z"}))
    queue = tmp_path / "queue"
    queue.mkdir()
    (queue / "q.jsonl").write_text(json.dumps(CHAT) + "\n{broken\n")
    sidecar = Tunewatch("sidecar", tmp_path / "work")
    sidecar.workdir.mkdir()
    sidecar.start(["--config", str(repo_root / "tunewatch.yml"), "training-sidecar",
                   "--status-file", str(status), "--queue-dir", f"{queue}:high"],
                  env={"TUNEWATCH_RUN": "side1"})
    try:
        prometheus.add_target("training-sidecar", sidecar.address)
        prometheus.wait_up("training-sidecar")
        sel = '{job="training-sidecar"}'
        assert prometheus.wait_value(f"tunewatch_training_step{sel}", lambda v: v == 120) == 120
        assert prometheus.value(
            'tunewatch_training_state{job="training-sidecar",state="training"}') == 1
        assert prometheus.value(
            'tunewatch_training_queue_malformed_lines{job="training-sidecar",priority="high"}'
        ) == 1
        write(status, json.dumps({**GOOD, "current_step": 125}))
        prometheus.wait_value(f"tunewatch_training_step{sel}", lambda v: v == 125)
        text = sidecar.metrics()
        assert 'run="r1"' in text  # the file's run wins over TUNEWATCH_RUN
        assert promtool_check_metrics(text) == ""
    finally:
        prometheus.remove_target("training-sidecar")
        sidecar.stop()


def test_sidecar_port_taken_is_a_usage_error(tmp_path: Path, repo_root: Path):
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        done = subprocess.run(
            [sys.executable, "-m", "tunewatch", "--config", str(repo_root / "tunewatch.yml"),
             "training-sidecar", "--status-file", str(tmp_path / "s.json"),
             "--web.listen-address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, cwd=repo_root,
            env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert done.returncode == 2, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr


def start_sidecar(tmp_path: Path, repo_root: Path, status: Path) -> Tunewatch:
    sidecar = Tunewatch("sidecar", tmp_path / "work")
    sidecar.workdir.mkdir()
    return sidecar.start(["--config", str(repo_root / "tunewatch.yml"), "training-sidecar",
                          "--status-file", str(status)], env={"TUNEWATCH_RUN": "ready1"})


def ready_status(sidecar: Tunewatch) -> int:
    return http_get(f"{sidecar.url}/-/ready")[0]


def test_sidecar_is_ready_only_after_the_first_read(tmp_path: Path, repo_root: Path):
    """A status file whose read blocks (a FIFO nobody writes yet, as a hung mount would):
    the sidecar is alive but not ready; once the read returns, it is ready."""
    status = tmp_path / "training_status.json"
    os.mkfifo(status)
    sidecar = start_sidecar(tmp_path, repo_root, status)
    try:
        assert http_get(f"{sidecar.url}/-/healthy")[0] == 200
        assert ready_status(sidecar) == 503
        fds: list[int] = []

        def open_writer() -> bool:
            """Opening without blocking fails (ENXIO) until the sidecar has the FIFO open."""
            fds.append(os.open(status, os.O_WRONLY | os.O_NONBLOCK))
            return True

        wait_for(open_writer, 30, "the sidecar reading the status file")
        with os.fdopen(fds[0], "w") as writer:
            writer.write(json.dumps({**GOOD, "updated_at": "2099-01-01T00:00:00Z"}))
        wait_for(lambda: ready_status(sidecar) == 200, 30, "/-/ready after the first read")
        # A regular file from now on (a FIFO would block every later read).
        write(status, json.dumps({**GOOD, "current_step": 121,
                                  "updated_at": "2099-01-01T00:00:00Z"}))
        assert 'tunewatch_training_step{run="r1"} 121.0' in sidecar.metrics()
        assert ready_status(sidecar) == 200
    finally:
        sidecar.stop()


def test_sidecar_without_status_file_is_ready(tmp_path: Path, repo_root: Path):
    """A missing status file counts as read: ready, and the answer says `unknown`."""
    sidecar = start_sidecar(tmp_path, repo_root, tmp_path / "absent.json")
    try:
        wait_for(lambda: ready_status(sidecar) == 200, 30, "/-/ready with no status file")
        text = sidecar.metrics()
        assert 'tunewatch_training_state{run="ready1",state="unknown"} 1.0' in text
        assert ('tunewatch_training_status_file_errors_total{reason="missing",run="ready1"} '
                '1.0') in text
    finally:
        sidecar.stop()
