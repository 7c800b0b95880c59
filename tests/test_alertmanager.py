"""Alertmanager routing: severity routes verified with amtool, and a real delivery."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from services import Alertmanager, free_port, http_get, wait_for

from tunewatch.core.config import load_config
from tunewatch.stack.render import render_alertmanager_config

ROUTES = [
    ({"alertname": "EvalRegression", "severity": "critical", "run": "r1"}, "pager"),
    ({"alertname": "GPUTemperatureHigh", "severity": "warning", "host": "h1"}, "chat"),
    ({"alertname": "DataQueueLow", "severity": "info"}, "webhook"),
    ({"alertname": "Watchdog", "severity": "info"}, "webhook"),
    ({"alertname": "Unlabelled"}, "webhook"),
]


@pytest.mark.parametrize(("labels", "receiver"), ROUTES)
def test_routes_by_severity(repo_root: Path, labels: dict[str, str], receiver: str):
    done = subprocess.run(
        ["amtool", "config", "routes", "test", "--config.file=alertmanager/alertmanager.yml",
         f"--verify.receivers={receiver}", *(f"{k}={v}" for k, v in labels.items())],
        cwd=repo_root, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_wrong_expectation_fails_amtool(repo_root: Path):
    done = subprocess.run(
        ["amtool", "config", "routes", "test", "--config.file=alertmanager/alertmanager.yml",
         "--verify.receivers=chat", "severity=critical"],
        cwd=repo_root, capture_output=True, text=True, check=False,
    )
    assert done.returncode != 0


def test_every_receiver_falls_back_to_the_default_webhook(repo_root: Path):
    import yaml

    config = yaml.safe_load((repo_root / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        urls = [hook["url"] for hook in receiver.get("webhook_configs", [])]
        assert "http://127.0.0.1:9948/alerts" in urls, receiver["name"]


def test_critical_alert_is_delivered_to_the_webhook_log(repo_root: Path, tmp_path: Path):
    webhook_port = free_port()
    cfg = load_config(None, environ={"TUNEWATCH_STACK__WEBHOOK_PORT": str(webhook_port)})
    text = render_alertmanager_config(repo_root / "alertmanager" / "alertmanager.yml", cfg)
    text = text.replace("group_wait: 30s", "group_wait: 1s")
    log_file = tmp_path / "alerts.jsonl"
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tunewatch", "alert-log", "--web.listen-address",
         f"127.0.0.1:{webhook_port}", "--file", str(log_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    am = Alertmanager(tmp_path, text)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{webhook_port}/")[0] == 200, 30, "alert-log")
        am.start()
        alert = [{"labels": {"alertname": "EvalRegression", "severity": "critical",
                             "run": "r1", "host": "eval1"},
                  "annotations": {"summary": "Exact match dropped.",
                                  "description": "step 300: 0.62 -> 0.40, p=0.001"}}]
        req = urllib.request.Request(f"{am.url}/api/v2/alerts", data=json.dumps(alert).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
        wait_for(lambda: log_file.exists() and log_file.read_text().strip() != "", 60,
                 "the notification at the webhook")
        note = json.loads(log_file.read_text().splitlines()[0])
        assert note["receiver"] == "pager"
        assert note["status"] == "firing"
        assert note["alerts"][0]["annotations"]["description"] == "step 300: 0.62 -> 0.40, p=0.001"
    finally:
        am.stop()
        receiver.terminate()
        receiver.wait(timeout=10)


def post_alerts(am: Alertmanager, alerts: list[dict]) -> None:
    req = urllib.request.Request(f"{am.url}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def test_inhibitions(repo_root: Path, tmp_path: Path):
    """TargetDown silences a host's other alerts except TrainingCrashed; critical silences
    the warning of the same alert, run and host only."""
    cfg = load_config(None, environ={"TUNEWATCH_STACK__WEBHOOK_PORT": str(free_port())})
    text = render_alertmanager_config(repo_root / "alertmanager" / "alertmanager.yml", cfg)
    am = Alertmanager(tmp_path, text)
    am.start()

    def alert(name: str, severity: str, host: str, run: str = "r1") -> dict:
        return {"labels": {"alertname": name, "severity": severity, "host": host, "run": run}}

    try:
        post_alerts(am, [
            alert("TargetDown", "warning", "train1"),
            alert("TrainingCrashed", "critical", "train1"),
            alert("GPUThrottled", "warning", "train1"),
            alert("GPUThrottled", "warning", "eval1"),
            alert("GPUTemperatureHigh", "critical", "eval1"),
            alert("GPUTemperatureHigh", "warning", "eval1"),
            alert("GPUTemperatureHigh", "warning", "eval1", run="r2"),
        ])

        def states() -> dict[tuple[str, str, str, str], bool]:
            return {(a["labels"]["alertname"], a["labels"]["severity"], a["labels"]["host"],
                     a["labels"]["run"]): bool(a["status"]["inhibitedBy"])
                    for a in am.alerts()}

        wait_for(lambda: len(states()) == 7 and any(states().values()), 30, "inhibitions")
        assert states() == {
            ("TargetDown", "warning", "train1", "r1"): False,
            ("TrainingCrashed", "critical", "train1", "r1"): False,
            ("GPUThrottled", "warning", "train1", "r1"): True,
            ("GPUThrottled", "warning", "eval1", "r1"): False,
            ("GPUTemperatureHigh", "critical", "eval1", "r1"): False,
            ("GPUTemperatureHigh", "warning", "eval1", "r1"): True,
            ("GPUTemperatureHigh", "warning", "eval1", "r2"): False,
        }
    finally:
        am.stop()
