"""Scale: Prometheus remote_write to a real VictoriaMetrics, queried back with PromQL.

Why: long-term and cross-site storage is a clustered TSDB fed by remote_write (DESIGN
section 7); the dashboards must work unchanged against it. A real training sidecar is
scraped by its own Prometheus, which writes to VictoriaMetrics on 127.0.0.1; the series, its
labels and a dashboard-style query come back from VictoriaMetrics' Prometheus API.

VictoriaMetrics is not a bootstrap dependency: install it with
`apt-get install -y --no-install-recommends victoria-metrics`; without the binary this test
is skipped (the reason says so).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from services import LoopbackService, Prometheus, Tunewatch, http_get, wait_for
from test_dashboards_live import (
    RANGE_SECONDS,
    SCRAPE_SECONDS,
    grafana_interval,
    load,
    macros,
    panel_scopes,
    resolve_variables,
    substitute,
)

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow
BINARY = shutil.which("victoria-metrics") or shutil.which("victoria-metrics-prod")


class VictoriaMetrics(LoopbackService):
    """Single-node VictoriaMetrics on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        super().__init__("victoria-metrics", workdir)

    def start(self) -> VictoriaMetrics:
        assert BINARY is not None
        self.launch([BINARY, f"-httpListenAddr={self.address}",
                     f"-storageDataPath={self.workdir / 'vm-data'}", "-retentionPeriod=1d",
                     "-search.latencyOffset=0s", "-search.disableCache"], "/health")
        return self

    def api(self, path: str, params: dict[str, str]) -> Any:
        """Prometheus's HTTP API as VictoriaMetrics answers it (the `data` field)."""
        status, body = http_get(f"{self.url}{path}?{urllib.parse.urlencode(params)}")
        assert status == 200, f"{path} {params}: {body[:500]!r}"
        return json.loads(body)["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/query", {"query": promql})["result"])


class RemoteWritingPrometheus(Prometheus):
    """The test Prometheus plus a remote_write section."""

    def __init__(self, workdir: Path, write_url: str) -> None:
        super().__init__(workdir)
        self.write_url = write_url

    def render_config(self) -> dict[str, Any]:
        config = super().render_config()
        config["global"]["external_labels"] = {"monitor": "site-a"}
        config["remote_write"] = [{"url": self.write_url,
                                   "queue_config": {"batch_send_deadline": "1s"}}]
        return config


@pytest.mark.skipif(BINARY is None, reason="victoria-metrics not installed (optional, not in "
                    "bootstrap): apt-get install -y --no-install-recommends victoria-metrics")
def test_remote_write_to_victoriametrics(tmp_path: Path) -> None:
    status = tmp_path / "training_status.json"
    status.write_text(json.dumps({"state": "training", "step": 42, "max_steps": 100,
                                  "tokens_seen": 1000}))
    vm = VictoriaMetrics(tmp_path).start()
    sidecar = Tunewatch("sidecar", tmp_path).start(
        ["training-sidecar", "--status-file", str(status)], env={"TUNEWATCH_RUN": "vm-run"})
    prom = RemoteWritingPrometheus(tmp_path / "prom", f"{vm.url}/api/v1/write").start()
    try:
        prom.set_rule_files(sorted((REPO / "prometheus" / "rules").glob("*.yml")))
        prom.add_target("tunewatch-training", sidecar.address,
                        labels={"host": "h1", "role": "training"})
        prom.wait_up("tunewatch-training")

        def arrived() -> bool:
            return any(float(r["value"][1]) == 42 for r in vm.query(
                'tunewatch_training_step{job="tunewatch-training",run="vm-run"}'))

        wait_for(arrived, 60, "tunewatch_training_step in VictoriaMetrics", interval=0.5)
        (row,) = vm.query('tunewatch_training_step{run="vm-run"}')
        assert row["metric"]["host"] == "h1" and row["metric"]["monitor"] == "site-a"
        # Dashboard-style PromQL (progress ratio, a max by run) answered by VictoriaMetrics.
        progress = vm.query('max by (run) (tunewatch_training_step{run="vm-run"}'
                            ' / tunewatch_training_max_steps{run="vm-run"})')
        assert progress and float(progress[0]["value"][1]) == pytest.approx(0.42)
        ups = vm.query('up{job="tunewatch-training"}')
        assert ups and float(ups[0]["value"][1]) == 1

        # The training dashboard's queries: what Prometheus answers, VictoriaMetrics answers.
        for step in (50, 60, 70):
            status.write_text(json.dumps({"state": "training", "step": step, "max_steps": 100,
                                          "tokens_seen": step * 100, "loss": 2.0 - step / 100,
                                          "updated_at": time.time()}))
            time.sleep(1.5)
        time.sleep(3)  # the last samples and rule results reach VictoriaMetrics
        answered = dashboard_queries_with_data(prom, vm, "training")
        logging.getLogger(__name__).info("training dashboard on VictoriaMetrics: %s", answered)
        assert answered["prometheus"] >= 5, answered
        assert answered["missing_in_vm"] == [], answered
    finally:
        prom.stop()
        sidecar.stop()
        vm.stop()


def dashboard_queries_with_data(prom: Prometheus, vm: VictoriaMetrics, name: str) -> dict:
    """Run every query of dashboard `name` on both; those with data in Prometheus only."""
    dash = load(name)
    end = time.time()
    start = end - RANGE_SECONDS
    step = str(grafana_interval(RANGE_SECONDS, SCRAPE_SECONDS))
    builtins = macros(RANGE_SECONDS, SCRAPE_SECONDS)
    variables = resolve_variables(prom, dash, start, end)
    with_data, missing = 0, []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        for scope in panel_scopes(panel, variables, {}):
            for target in panel["targets"]:
                expr = substitute(target["expr"], {**scope, **builtins})
                params = {"query": expr, "start": str(start), "end": str(end), "step": step}
                if not any(s["values"] for s in
                           prom.api("/api/v1/query_range", params)["result"]):
                    continue
                with_data += 1
                if not any(s["values"] for s in
                           vm.api("/api/v1/query_range", params)["result"]):
                    missing.append(f"{panel['title']}: {expr}")
    return {"prometheus": with_data, "missing_in_vm": missing}
