"""`make up`: the stack starts, every configured target is up, Ctrl-C/SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from services import free_port, wait_for

from tunewatch.stack.status import status_line


def stack_env(data_dir: Path) -> tuple[dict[str, str], int]:
    prom_port = free_port()
    env = {
        **os.environ,
        "TUNEWATCH_STACK__DATA_DIR": str(data_dir),
        "TUNEWATCH_STACK__PROMETHEUS_PORT": str(prom_port),
        "TUNEWATCH_STACK__ALERTMANAGER_PORT": str(free_port()),
        "TUNEWATCH_STACK__NODE_EXPORTER_PORT": str(free_port()),
        "TUNEWATCH_STACK__WEBHOOK_PORT": str(free_port()),
        # Used only where a Grafana binary is on PATH (then with the stack's PostgreSQL).
        "TUNEWATCH_STACK__GRAFANA_PORT": str(free_port()),
        "TUNEWATCH_STACK__POSTGRES_PORT": str(free_port()),
        "TUNEWATCH_STACK__SCRAPE_INTERVAL_SECONDS": "1",
    }
    for key in ("EXPORTER", "TRAINING", "EVALUATOR"):
        env[f"TUNEWATCH_{key}__LISTEN_ADDRESS"] = f"127.0.0.1:{free_port()}"
    return env, prom_port


def configured_targets(data_dir: Path) -> int:
    rendered = yaml.safe_load((data_dir / "prometheus" / "prometheus.yml").read_text())
    count = sum(len(g["targets"]) for job in rendered["scrape_configs"]
                for g in job.get("static_configs", []))
    for path in (data_dir / "prometheus" / "targets").rglob("*.yml"):
        count += sum(len(g["targets"]) for g in yaml.safe_load(path.read_text()))
    return count


RUN = "stack-test-run"


def process_runs(prom: str, process: str) -> set[str]:
    """The run labels Prometheus has for the host exporter's `process` right now."""
    import requests

    answer = requests.get(f"{prom}/api/v1/query", timeout=5, params={
        "query": f'tunewatch_process_info{{process="{process}"}}'}).json()
    return {r["metric"].get("run", "") for r in answer["data"]["result"]}


def stop_twice(make_pid: int) -> list[Any]:
    """Stop `tunewatch up` under make as a user often does: Ctrl-C and, right behind it, a
    SIGTERM (make passes a SIGTERM sent to its group on, so it can arrive twice). Returns
    the stack's components' processes, found before the signals."""
    import psutil

    up, components = None, []
    for child in psutil.Process(make_pid).children(recursive=True):
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue  # exited meanwhile (its exit shows in the make's output)
        if "up" in argv and any("tunewatch" in a for a in argv):
            up = child
            components = child.children()
    assert up is not None, "no tunewatch up under make"
    up.send_signal(signal.SIGINT)
    up.send_signal(signal.SIGTERM)
    return components


def test_make_up_brings_every_target_up_and_stops_cleanly(repo_root: Path, tmp_path: Path):
    data_dir = tmp_path / "var"
    env, prom_port = stack_env(data_dir)
    # The run set in the config file only (not exported): the stack hands it to the
    # processes it starts, so the exporter labels them with it.
    config = tmp_path / "tunewatch.yml"
    config.write_text(f"run: {RUN}\n")
    env["TUNEWATCH_CONFIG"] = str(config)
    env.pop("TUNEWATCH_RUN", None)
    proc = subprocess.Popen(
        ["make", "-s", "up", "UP_ARGS=--duration 240"], cwd=repo_root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        wait_for(lambda: (data_dir / "prometheus" / "targets").exists(), 120, "stack files")
        wait_for(lambda: status_line(prom).startswith("targets up"), 120, "prometheus")
        expected = configured_targets(data_dir)
        assert expected >= 3
        wait_for(lambda: status_line(prom).startswith(f"targets up {expected}/{expected}"),
                 90, f"{expected} targets up (last: {status_line(prom)})")
        for process in ("trainer", "evaluator"):
            wait_for(lambda p=process: process_runs(prom, p) == {RUN}, 60,
                     f"{process} labelled run={RUN} (last: {process_runs(prom, process)})")
    finally:
        components = stop_twice(proc.pid)
        out, _ = proc.communicate(timeout=60)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "tunewatch stack is up" in text and "stopping the stack" in text
    # The second signal did not cut the teardown short: every component is gone.
    assert "already stopping the stack; SIGTERM ignored" in text, text
    assert len(components) >= expected
    assert not [p for p in components if p.is_running() and p.status() != "zombie"], text
    assert "prometheus" in text and f"127.0.0.1:{prom_port}" in text
    # The dashboards' URLs where Grafana exists, else one line on how to get them.
    assert ("dashboards: no Grafana on PATH" in text) != ("dashboards (Grafana" in text)


def test_a_taken_port_is_a_clear_error(tmp_path: Path):
    env, prom_port = stack_env(tmp_path / "var")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", prom_port))
        sock.listen(1)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "tunewatch", "up", "--duration", "5"],
                              env=env, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert f"port {prom_port} for prometheus is already in use" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 30
