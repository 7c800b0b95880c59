"""`tunewatch exporter` as a real process, scraped by the real Prometheus (plain and TLS)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml
from services import (
    Prometheus,
    Tunewatch,
    free_port,
    http_get,
    promtool_check_metrics,
    wait_for,
)

REPO = Path(__file__).resolve().parent.parent
GPU_FIXTURE = REPO / "tests" / "fixtures" / "gpu" / "h100-load.json"
MARKER = "tunewatch-test-trainer"


def make_tree(root: Path) -> dict[str, Path]:
    """Checkpoints, queues (with files that must not count) and a bad pid file."""
    ckpt = root / "checkpoints"
    for step in (100, 250):
        (ckpt / f"checkpoint-{step}").mkdir(parents=True)
        (ckpt / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"\0" * 1000)
    (ckpt / "runs").mkdir()  # not a checkpoint
    high = root / "queue" / "high"
    high.mkdir(parents=True)
    for i in range(3):
        (high / f"batch_{i}.jsonl").write_text('{"messages": []}\n')
    (high / "batch_9.jsonl.tmp").write_text("partial")
    (high / ".hidden").write_text("x")
    low = root / "queue" / "low"
    low.mkdir(parents=True)
    (root / "bad.pid").write_text("not-a-pid\n")
    return {"checkpoints": ckpt, "high": high, "low": low}


def write_config(root: Path, tree: dict[str, Path]) -> Path:
    cfg = {
        "exporter": {
            "collector_timeout_seconds": 3.0,
            "processes": [
                {"name": "trainer", "cmdline_pattern": MARKER},
                {"name": "evaluator", "pid_file": str(root / "bad.pid")},
            ],
            "checkpoint_dirs": [str(tree["checkpoints"])],
            "queue_dirs": [
                {"path": str(tree["high"]), "priority": "high"},
                {"path": str(tree["low"]), "priority": "low"},
                {"path": str(root / "queue" / "absent"), "priority": "normal"},
            ],
        }
    }
    path = root / "tunewatch.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in trainer process with a run and ranks in its environment."""
    env = {**os.environ, "TUNEWATCH_RUN": "run-7", "RANK": "1", "LOCAL_RANK": "0"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", MARKER],
                            env=env)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def host_exporter(tmp_path_factory: pytest.TempPathFactory,
                  workload: subprocess.Popen[bytes]) -> Iterator[tuple[Tunewatch, dict]]:
    root = tmp_path_factory.mktemp("host-exporter")
    tree = make_tree(root)
    config = write_config(root, tree)
    exporter = Tunewatch("exporter", root).start(
        ["exporter", "--config", str(config)],
        env={"TUNEWATCH_EXPORTER__GPU_READINGS_FILE": str(GPU_FIXTURE)})
    yield exporter, tree
    exporter.stop()


def sel(metric: str, job: str = "tunewatch-exporter", **labels: str) -> str:
    """A PromQL selector for one series of the exporter under test."""
    matchers = ",".join([f'job="{job}"', *(f'{k}="{v}"' for k, v in labels.items())])
    return f"{metric}{{{matchers}}}"


def test_prometheus_scrapes_process_and_files_series(prometheus: Prometheus, host_exporter,
                                                      workload):
    exporter, tree = host_exporter
    prometheus.add_target("tunewatch-exporter", exporter.address,
                          {"host": "local", "role": "training"})
    try:
        prometheus.wait_up("tunewatch-exporter")
        prometheus.wait_value(sel("tunewatch_process_up", process="trainer"), lambda v: v == 1)
        info = prometheus.query(sel("tunewatch_process_info", process="trainer"))
        assert info[0]["metric"]["run"] == "run-7"
        assert info[0]["metric"]["rank"] == "1"
        assert info[0]["metric"]["pid"] == str(workload.pid)
        assert info[0]["metric"]["role"] == "training"
        rss = prometheus.value(sel("tunewatch_process_resident_memory_bytes", process="trainer"))
        assert rss is not None and rss > 1e6
        assert prometheus.value(sel("tunewatch_process_up", process="evaluator")) == 0
        assert prometheus.value(sel("tunewatch_files_queue_files", priority="high")) == 3
        assert prometheus.value(sel("tunewatch_files_queue_files", priority="low")) == 0
        assert not prometheus.query(sel("tunewatch_files_queue_files", priority="normal"))
        assert prometheus.value(sel("tunewatch_files_checkpoint_newest_step")) == 250
        assert prometheus.value(sel("tunewatch_files_checkpoints")) == 2
        free = prometheus.value(sel("tunewatch_files_checkpoint_filesystem_free_bytes"))
        assert free is not None and free > 0
        power = prometheus.value(sel("tunewatch_gpu_power_watts", gpu="0"))
        assert power is not None and power > 0
        for collector in ("gpu", "process", "files"):
            assert prometheus.value(
                sel("tunewatch_exporter_collector_success", collector=collector)) == 1
        # A checkpoint saved now is seen on the next scrape.
        (tree["checkpoints"] / "checkpoint-400").mkdir()
        prometheus.wait_value(sel("tunewatch_files_checkpoint_newest_step"), lambda v: v == 400)
    finally:
        prometheus.remove_target("tunewatch-exporter")


def test_failures_are_counted_not_hidden(host_exporter):
    exporter, _ = host_exporter
    text = exporter.metrics()
    assert ('tunewatch_process_errors_total{process="evaluator",reason="pid_file_invalid"}'
            in text)
    assert 'tunewatch_files_scan_errors_total{reason="not_found"}' in text
    assert "tunewatch_files_scan_errors_total{reason=\"not_found\"} 0.0" not in text


def test_promtool_finds_nothing(host_exporter):
    exporter, _ = host_exporter
    assert promtool_check_metrics(exporter.metrics()) == ""


def test_landing_health_ready(host_exporter):
    exporter, _ = host_exporter
    assert http_get(exporter.url + "/")[0] == 200
    assert http_get(exporter.url + "/-/healthy")[0] == 200
    assert http_get(exporter.url + "/-/ready")[0] == 200


def test_ready_only_after_the_first_collection(tmp_path: Path):
    """/-/ready is 503 while the first collection cannot finish, 200 once it has.

    The process collector reads its pid file on every collection; a FIFO makes that read
    wait until the test writes a pid, so "collection not done" is a state, not a race.
    """
    fifo = tmp_path / "trainer.pid"
    os.mkfifo(fifo)
    config = tmp_path / "tunewatch.yml"
    config.write_text(yaml.safe_dump({"exporter": {
        "collector_timeout_seconds": 120.0,
        "collectors": {"gpu": False, "files": False, "process": True},
        "processes": [{"name": "trainer", "pid_file": str(fifo)}],
    }}))
    exporter = Tunewatch("exporter-ready", tmp_path).start(["exporter", "--config", str(config)])
    try:
        assert http_get(exporter.url + "/-/ready")[0] == 503
        with open(fifo, "w") as writer:  # unblocks the collection waiting on the read
            writer.write(f"{os.getpid()}\n")
        wait_for(lambda: http_get(exporter.url + "/-/ready")[0] == 200, 30,
                 "the exporter to be ready after its first collection")
    finally:
        exporter.stop()


def run_exporter(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunewatch", "exporter", *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_taken_port_exits_2(host_exporter, tmp_path: Path):
    exporter, _ = host_exporter
    proc = run_exporter(["--web.listen-address", exporter.address], tmp_path)
    assert proc.returncode == 2
    assert f"cannot listen on {exporter.address}" in proc.stderr


def test_unknown_collector_in_config_exits_2(tmp_path: Path):
    cfg = tmp_path / "t.yml"
    cfg.write_text("exporter:\n  collectors: {gpu: true, disk: true}\n")
    proc = run_exporter(["--config", str(cfg), "--web.listen-address",
                         f"127.0.0.1:{free_port()}"], tmp_path)
    assert proc.returncode == 2
    assert "unknown collector(s) disk" in proc.stderr


def test_bad_process_target_names_the_key(tmp_path: Path):
    cfg = tmp_path / "t.yml"
    cfg.write_text("exporter:\n  processes:\n    - {name: x, cmdline_pattern: '('}\n")
    proc = run_exporter(["--config", str(cfg)], tmp_path)
    assert proc.returncode == 2
    assert "exporter.processes[0].cmdline_pattern" in proc.stderr


def test_collector_flags(tmp_path: Path):
    exporter = Tunewatch("exporter-flags", tmp_path).start(
        ["exporter", "--no-collector.gpu", "--no-collector.files"])
    try:
        text = exporter.metrics()
        assert 'collector="process"' in text
        assert 'collector="gpu"' not in text and "tunewatch_gpu_" not in text
        assert 'collector="files"' not in text
    finally:
        exporter.stop()


# --------------------------------------------------------------------------- TLS


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=tunewatch-test-ca", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", "san.cnf"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN=tunewatch-{name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *extra, cwd=d)


def test_prometheus_scrapes_over_tls_with_basic_auth(prometheus: Prometheus, tmp_path: Path):
    make_certificates(tmp_path)
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(rounds=10)).decode()
    (tmp_path / "web.yml").write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key",
                              "client_auth_type": "RequireAndVerifyClientCert",
                              "client_ca_file": "ca.crt"},
        "basic_auth_users": {"prometheus": hashed},
    }))
    exporter = Tunewatch("exporter-tls", tmp_path, scheme="https")
    exporter.start(["exporter", "--no-collector.gpu", "--web.config.file",
                    str(tmp_path / "web.yml")],
                   probe=lambda: _tls_ok(exporter.address, tmp_path))
    job = {
        "job_name": "tls-exporter", "scheme": "https",
        "tls_config": {"ca_file": str(tmp_path / "ca.crt"),
                       "cert_file": str(tmp_path / "client.crt"),
                       "key_file": str(tmp_path / "client.key")},
        "basic_auth": {"username": "prometheus", "password": "scrape-pass"},
        "static_configs": [{"targets": [exporter.address]}],
    }
    try:
        # Without a client certificate the handshake fails; with one but no password: 401.
        assert _curl(exporter.address, tmp_path, cert=False) != "200"
        assert _curl(exporter.address, tmp_path, cert=True, auth=False) == "401"
        prometheus.reload_with_extra_scrape_config(job)
        prometheus.wait_up("tls-exporter")
        rejected = "tunewatch_exporter_http_requests_rejected_total"
        assert prometheus.value(
            sel("tunewatch_exporter_collector_success", "tls-exporter", collector="files")) == 1
        prometheus.wait_value(sel(rejected, "tls-exporter", reason="tls_handshake"),
                              lambda v: v >= 1)
        prometheus.wait_value(sel(rejected, "tls-exporter", reason="unauthorized"),
                              lambda v: v >= 1)
    finally:
        prometheus.extra_scrape_configs = [
            c for c in prometheus.extra_scrape_configs if c["job_name"] != "tls-exporter"]
        prometheus.reload()
        exporter.stop()


def _curl(address: str, d: Path, cert: bool, auth: bool = True) -> str:
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
            "--cacert", str(d / "ca.crt"), f"https://{address}/metrics"]
    if cert:
        argv += ["--cert", str(d / "client.crt"), "--key", str(d / "client.key")]
    if auth:
        argv += ["-u", "prometheus:scrape-pass"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def _tls_ok(address: str, d: Path) -> bool:
    return _curl(address, d, cert=True, auth=True) == "200"
