"""The test services themselves: real binaries answer and are scraped (foundation)."""

from __future__ import annotations

import subprocess

from services import Alertmanager, NodeExporter, Postgres, Prometheus


def test_prometheus_scrapes_node_exporter(prometheus: Prometheus, node_exporter: NodeExporter):
    prometheus.add_target("node", node_exporter.address, {"host": "test", "role": "eval"})
    prometheus.wait_up("node")
    result = prometheus.query('node_exporter_build_info{job="node", role="eval"}')
    assert len(result) == 1
    assert result[0]["metric"]["host"] == "test"


def test_prometheus_reports_a_dead_target_down(prometheus: Prometheus):
    from services import free_port

    prometheus.add_target("nothing-there", f"127.0.0.1:{free_port()}")
    assert prometheus.wait_value('up{job="nothing-there"}', lambda v: v == 0.0) == 0.0
    prometheus.remove_target("nothing-there")


def test_alertmanager_accepts_alerts(alertmanager: Alertmanager):
    import json
    import urllib.request

    alert = [{"labels": {"alertname": "FixtureCheck", "severity": "info"}}]
    req = urllib.request.Request(
        f"{alertmanager.url}/api/v2/alerts", data=json.dumps(alert).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    names = [a["labels"]["alertname"] for a in alertmanager.alerts()]
    assert "FixtureCheck" in names


def test_postgres_runs_as_postgres_and_answers(postgres: Postgres):
    done = subprocess.run(
        ["psql", postgres.dsn, "-At", "-c", "select current_user, 6*7"],
        capture_output=True, text=True, check=True,
    )
    assert done.stdout.strip() == "postgres|42"
    pid = postgres.postmaster_pid()
    assert pid is not None
    with open(f"/proc/{pid}/status") as fh:
        uid_line = next(line for line in fh if line.startswith("Uid:"))
    assert uid_line.split()[1] != "0"
