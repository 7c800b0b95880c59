"""docs/metrics.md equals what the running tunewatch servers really publish, name and type.

Each server runs as a real process, is driven through its failure paths first (a bad pid
file, a missing queue directory, ...), then scraped over HTTP. Each `## ` section of the
catalogue belongs to one process; "Every tunewatch server" belongs to all of them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from catalogue import rows, section_rows, sections, types
from prometheus_client.parser import text_string_to_metric_families
from services import Tunewatch, free_port, http_get, promtool_check_metrics, wait_for

REPO = Path(__file__).resolve().parent.parent
NAME = re.compile(r"(?:tunewatch|process|python)_\w+")
COMMON = "Every tunewatch server"
HOST = "Host exporter"


def published(text: str) -> dict[str, str]:
    """Exposed name -> type, from the families' TYPE lines (a family published without
    samples yet still counts); counters as `..._total`, `_created` left out."""
    out: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created") and family.type == "gauge":
            continue
        suffix = "_total" if family.type == "counter" else ""
        out[family.name + suffix] = family.type
    return out


def section(title: str) -> dict[str, str]:
    """The metrics of the one section whose title starts with `title`, and the common
    ones: name -> type (no name listed twice in either)."""
    return {**types(section_rows(title)), **types(section_rows(COMMON))}


def assert_equal(documented: dict[str, str], seen: dict[str, str], who: str) -> None:
    missing = sorted(set(seen) - set(documented))
    stale = sorted(set(documented) - set(seen))
    assert not missing, f"{who} publishes metrics docs/metrics.md does not list: {missing}"
    assert not stale, f"docs/metrics.md lists metrics {who} does not publish: {stale}"
    wrong = {n: (documented[n], t) for n, t in seen.items() if documented[n] != t}
    assert not wrong, f"{who}: documented vs published type differ: {wrong}"


# --------------------------------------------------------------------------- host exporter


@pytest.fixture(scope="module")
def host_text(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("catalogue-host")
    (root / "ckpt" / "checkpoint-5").mkdir(parents=True)
    (root / "queue").mkdir()
    (root / "queue" / "a.jsonl").write_text("{}\n")
    (root / "bad.pid").write_text("garbage")
    cfg = {"exporter": {
        "processes": [{"name": "self", "cmdline_pattern": "tunewatch exporter|-m tunewatch"},
                      {"name": "broken", "pid_file": str(root / "bad.pid")}],
        "checkpoint_dirs": [str(root / "ckpt")],
        "queue_dirs": [{"path": str(root / "queue"), "priority": "high"},
                       {"path": str(root / "absent"), "priority": "low"}],
        "gpu_readings_file": str(REPO / "tests" / "fixtures" / "gpu" / "h100-load.json"),
    }}
    (root / "tunewatch.yml").write_text(yaml.safe_dump(cfg))
    exporter = Tunewatch("exporter", root).start(["exporter", "--config",
                                                   str(root / "tunewatch.yml")])
    try:
        exporter.metrics()  # the first scrape runs the failure paths
        yield exporter.metrics()
    finally:
        exporter.stop()


def test_host_exporter_matches_the_catalogue(host_text: str):
    documented = section(HOST)
    seen = published(host_text)
    # The GPU rows are compared with every recorded board (tests/test_gpu_docs.py); one
    # recording cannot reach them all (consumer-only fields, read errors), so here the GPU
    # metrics published must be documented, and everything else must match exactly.
    gpu_seen = {n: t for n, t in seen.items() if n.startswith("tunewatch_gpu_")}
    assert gpu_seen, "the recorded GPU readings were not served"
    for name, kind in gpu_seen.items():
        assert documented.get(name) == kind, f"{name} ({kind}) not in docs/metrics.md"
    assert_equal({n: t for n, t in documented.items() if not n.startswith("tunewatch_gpu_")},
                 {n: t for n, t in seen.items() if not n.startswith("tunewatch_gpu_")},
                 "tunewatch exporter")


def test_host_exporter_output_passes_promtool(host_text: str):
    assert promtool_check_metrics(host_text) == ""


def test_every_row_is_well_formed():
    """Five columns, a known name prefix and type, a unit and a meaning on every row."""
    found = rows()
    assert found, "docs/metrics.md has no metric rows"
    for row in found:
        assert NAME.fullmatch(row.name), row.line
        assert len(row.cells) >= 5, row.line
        assert row.type in ("gauge", "counter", "histogram", "summary"), row.line
        assert row.unit and row.meaning, row.line
    for rows_of_section in sections().values():
        types(rows_of_section)  # no metric listed twice in one section


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def training_texts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """The sidecar on a status file and a queue with a malformed line, after a scrape with
    the status file missing; and the PrometheusCallback serving a TrainingMetrics after
    steps, logs, an evaluation, a checkpoint and a NaN loss."""
    from exporters.training import PrometheusCallback, TrainingMetrics

    root = tmp_path_factory.mktemp("catalogue-training")
    status = root / "training_status.json"
    queue = root / "queue"
    queue.mkdir()
    (queue / "q.jsonl").write_text('{"messages": []}\n{broken\n')
    sidecar = Tunewatch("sidecar", root).start(
        ["training-sidecar", "--status-file", str(status), "--queue-dir", f"{queue}:high"])
    metrics = TrainingMetrics(run="cat", model_name="tiny", dataset="d", regime="plain_sft")
    callback = PrometheusCallback(listen_address=f"127.0.0.1:{free_port()}", metrics=metrics)
    server = callback.start_server()
    try:
        sidecar.metrics()  # status file missing: the error path
        status.write_text(json.dumps({
            "state": "training", "step": 10, "max_steps": 100, "epoch": 0.5, "loss": 1.5,
            "eval_loss": 1.7, "learning_rate": 1e-4, "grad_norm": 0.9, "tokens_seen": 5000,
            "samples_seen": 80, "run": "cat", "model": "tiny", "current_file": "a.jsonl",
            "batch": 3, "batches_total": 10, "batch_size": 16, "updated_at": time.time()}))
        wait_for(lambda: "tunewatch_training_step{" in sidecar.metrics(), 30, "status read")
        metrics.set_state("training")
        metrics.update(step=1, max_steps=10, epoch=0.1, loss=2.0, grad_norm=1.0,
                       learning_rate=1e-4, tokens=100, samples=4)
        metrics.update(step=2, loss=float("nan"))
        metrics.logged({"loss": 1.8, "reward": float("inf")})
        metrics.evaluated({"eval_loss": 1.9, "eval_accuracy": 0.25})
        metrics.checkpoint_saved(2)
        status_code, body = http_get(f"{server.url}/metrics")
        assert status_code == 200
        yield [sidecar.metrics(), body.decode()]
    finally:
        callback.stop()
        sidecar.stop()


def test_training_servers_match_the_catalogue(training_texts: list[str]):
    seen: dict[str, str] = {}
    for text in training_texts:
        seen.update(published(text))
    assert_equal(section("Training metrics"), seen, "sidecar and callback together")


def test_training_output_passes_promtool(training_texts: list[str]):
    for text in training_texts:
        assert promtool_check_metrics(text) == ""


# --------------------------------------------------------------------------- evaluator


@pytest.fixture(scope="module")
def evaluator_text(tmp_path_factory: pytest.TempPathFactory, tiny_run) -> Iterator[str]:
    """The daemon after two good checkpoints and one broken one (failure path)."""
    root = tmp_path_factory.mktemp("catalogue-evaluator")
    ckpts = root / "checkpoints"
    ckpts.mkdir()
    for src in tiny_run.checkpoints[:2]:
        shutil.copytree(src, ckpts / src.name)
    broken = ckpts / "checkpoint-1"
    shutil.copytree(tiny_run.checkpoints[0], broken)
    (broken / "config.json").write_text("{not json")
    daemon = Tunewatch("evaluator", root).start(
        ["evaluate", "--checkpoints", str(ckpts), "--data", str(tiny_run.data_dir),
         "--state-dir", str(root / "state"), "--limit", "30"],
        env={"TUNEWATCH_EVALUATOR__RETRY_BACKOFF_SECONDS": "0.05"})

    def done() -> bool:
        text = daemon.metrics()
        return ("tunewatch_eval_evaluations_total 2.0" in text
                and 'tunewatch_eval_failures_total{reason="config"} 0.0' not in text)

    try:
        wait_for(done, 180, "two evaluations and one failure")
        yield daemon.metrics()
    finally:
        daemon.stop()


def test_evaluator_matches_the_catalogue(evaluator_text: str):
    assert_equal(section("Evaluator"), published(evaluator_text), "tunewatch evaluate")


def test_evaluator_output_passes_promtool(evaluator_text: str):
    assert promtool_check_metrics(evaluator_text) == ""
