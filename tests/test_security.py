"""Security review as tests: no default passwords, loopback by default, secrets kept out of
logs, label values bounded.

Why tests: each of these is a one-line regression away (a convenience `admin/admin` in a
compose file, a `0.0.0.0` default, a DSN in a log line), and none of them shows up in a
functional test. docs/security.md explains each rule.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import yaml
from services import Tunewatch, http_get, promtool_check_metrics

from evaluators.predictions.store import redact
from exporters.labels import MAX_LENGTH, bounded_label_value
from tunewatch.core.config import Config

REPO = Path(__file__).resolve().parent.parent
DEPLOYMENT_FILES = [
    *REPO.glob("docker-compose*.yml"), REPO / "tunewatch.yml", REPO / "Dockerfile",
    REPO / "Makefile", *REPO.glob("alertmanager/**/*.yml"), *REPO.glob("prometheus/**/*.yml"),
    *REPO.glob("grafana/provisioning/**/*.yml"), *REPO.glob("scripts/*.sh"),
    *REPO.glob("deploy/**/*"),
]
# key = value or key: value with a literal secret (not a *_FILE path, not empty, not a
# placeholder in angle brackets or an environment reference). A YAML key's colon is followed
# by a space; a colon inside a name (a recording rule such as
# run:tunewatch_training_energy_per_token:joules) is not an assignment.
SECRET_ASSIGNMENT = re.compile(
    r"(?i)(?<![:\w])(\w*?(password|passwd|secret|token|api_key)(_file|__file)?)\b"
    r"\s*(?:=\s*|:\s+)['\"]?([^\s'\"#,}]+)")
URL_WITH_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:([^@\s/]+)@")
ALLOWED_VALUE = re.compile(r"^(<[^>]*>|\$\{?\w+\}?.*|/.*|\.\.?/.*|\*+|\.\.\.|x+)$")


def _secret_findings(path: Path) -> list[str]:
    found = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for m in SECRET_ASSIGNMENT.finditer(line):
            key, value = m.group(1), m.group(4)
            if key.lower().endswith(("_file", "__file")) or ALLOWED_VALUE.match(value):
                continue
            if value.lower() in ("true", "false", "null", "none", "required", "|", ">"):
                continue
            found.append(f"{path.relative_to(REPO)}:{lineno}: {key}")
        for m in URL_WITH_PASSWORD.finditer(line):
            if not ALLOWED_VALUE.match(m.group(1)):
                found.append(f"{path.relative_to(REPO)}:{lineno}: URL with a password")
    return found


def test_no_default_passwords_in_deployment_files() -> None:
    findings = [f for path in DEPLOYMENT_FILES if path.is_file() for f in _secret_findings(path)]
    assert findings == [], "literal secrets in the repository:\n" + "\n".join(findings)
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grafana_env = compose["services"]["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana_env  # only the __FILE form
    assert grafana_env.get("GF_AUTH_ANONYMOUS_ENABLED") == "false"


def test_the_scanner_finds_a_planted_password(tmp_path: Path) -> None:
    planted = REPO / "tests" / ".planted-secret-test.yml"  # under REPO for relative_to
    try:
        planted.write_text("GF_SECURITY_ADMIN_PASSWORD: admin\nurl: postgres://u:hunter2@h/db\n"
                           "password_file: /run/secrets/x\nAPI_TOKEN=s3cr3t\n"
                           "- record: run:tunewatch_training_energy_per_token:joules\n")
        found = _secret_findings(planted)
        assert len(found) == 3 and found[2].endswith(":4: API_TOKEN")
    finally:
        planted.unlink()


def test_every_server_binds_loopback_by_default() -> None:
    cfg = Config()
    for name in ("exporter", "training", "evaluator"):
        address = getattr(cfg, name).listen_address
        assert address.startswith("127.0.0.1:"), f"{name}.listen_address default {address}"
    import inspect

    from exporters.training.callback import PrometheusCallback
    default = inspect.signature(PrometheusCallback).parameters["listen_address"].default
    assert default.startswith("127.0.0.1:")

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        assert "ports" not in service or all(
            str(p).startswith("127.0.0.1:") for p in service["ports"]), name
        command = service.get("command", [])
        words = command if isinstance(command, list) else command.split()
        for i, word in enumerate(words):
            if "listen-address" in word:
                value = word.split("=", 1)[1] if "=" in word else words[i + 1]
                assert value == "" or value.startswith("127.0.0.1:"), f"{name}: {word} {value}"
    assert compose["services"]["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    text = (REPO / "tunewatch.yml").read_text()
    assert "0.0.0.0" not in text and "[::]" not in text


@pytest.mark.slow
def test_basic_auth_passwords_never_logged(tmp_path: Path) -> None:
    secret = "s3cret-Very-Unique-7731"
    hashed = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    sidecar = Tunewatch("sidecar", tmp_path)
    sidecar.start(
        ["training-sidecar", "--status-file", str(tmp_path / "none.json"),
         "--web.config.file", str(web)],
        probe=lambda: http_get(f"{sidecar.url}/-/healthy")[0] in (200, 401),
        env={"TUNEWATCH_LOG_LEVEL": "debug"}, timeout=60)
    try:
        for password in (secret, secret + "-wrong", "hunter2-wrong"):
            token = base64.b64encode(f"prom:{password}".encode()).decode()
            req = urllib.request.Request(f"{sidecar.url}/metrics",
                                         headers={"Authorization": f"Basic {token}"})
            try:
                urllib.request.urlopen(req, timeout=5).read()
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
        sidecar.stop()
        logged = sidecar.log_path.read_text()
        assert secret not in logged and "hunter2" not in logged
        assert base64.b64encode(f"prom:{secret}".encode()).decode() not in logged
    finally:
        sidecar.stop()


def test_store_urls_are_redacted_for_logs() -> None:
    shown = redact("postgresql://tunewatch:hunter2@127.0.0.1:5432/tunewatch")
    assert "hunter2" not in shown and "127.0.0.1:5432" in shown


@pytest.mark.parametrize(("raw", "expected"), [
    ("r1", "r1"),
    ("  spaced\n\tout  ", "spaced out"),
    ('quote"back\\slash', 'quote"back\\slash'),  # legal; the encoder escapes them
    ("x" * 1000, "x" * (MAX_LENGTH - 3) + "..."),
    ("a\x00b\x1bc", "a b c"),
])
def test_bounded_label_value(raw: str, expected: str) -> None:
    assert bounded_label_value(raw) == expected


def test_status_file_texts_reach_labels_bounded(tmp_path: Path) -> None:
    from exporters.exposition import render_families
    from exporters.training.status_collector import StatusFileCollector

    status = tmp_path / "status.json"
    status.write_text(json.dumps({
        "step": 1, "run": "run\n" + "r" * 5000, "model": "m" * 10_000,
        "dataset": 'evil"} 1\nfake_metric 1', "current_file": "f\x00" * 300,
    }))
    collector = StatusFileCollector(status, run="r1")
    collector.refresh()
    text = render_families(list(collector.collect())).decode()
    values = re.findall(r'="((?:[^"\\]|\\.)*)"', text)
    assert values and max(len(v) for v in values) <= MAX_LENGTH + 20  # escapes add a few
    assert "\nfake_metric" not in text
    assert promtool_check_metrics(text) == ""


def test_values_reaching_sql_are_bound_parameters(tmp_path):
    """Hostile text in every field a user or a data file controls is stored and matched as
    data: the table survives and the filter finds exactly that row (SQLite; the PostgreSQL
    path runs the same statements, tests/test_predictions_store.py)."""
    from predictions_support import row

    from evaluators.predictions.store import Filters, open_store

    hostile = "x'); DROP TABLE predictions; --"
    store = open_store("", state_dir=tmp_path)
    try:
        store.ensure_schema()
        store.write([row(run=hostile, dataset=hostile, prompt=hostile, answer=hostile,
                         example_id=hostile, example_key="evil"),
                     row(run="r1", example_key="k1")])
        found = store.query(Filters(run=hostile, dataset=hostile, example_id=hostile))
        assert [r["prompt"] for r in found] == [hostile]
        assert store.count(Filters()) == 2  # the table is still there, with both rows
    finally:
        store.close()
