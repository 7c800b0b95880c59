"""Fault: Prometheus restarts while the exporters keep running.

Why: Prometheus is restarted for upgrades and config changes; the exporters must not notice
(no error, no state lost, nothing to reconnect) and Prometheus must pick the targets up again
from its file_sd targets, with the data from before the restart still queryable. Uses its
own Prometheus (never the session one) and a real host exporter and training sidecar.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from services import Prometheus, Tunewatch


@pytest.mark.slow
def test_prometheus_restart_while_exporters_run(tmp_path: Path) -> None:
    status = tmp_path / "training_status.json"
    status.write_text(json.dumps({"state": "training", "step": 10, "max_steps": 100}))
    exporter = Tunewatch("exporter", tmp_path).start(
        ["exporter", "--no-collector.gpu", "--no-collector.files"])
    sidecar = Tunewatch("sidecar", tmp_path).start(
        ["training-sidecar", "--status-file", str(status)], env={"TUNEWATCH_RUN": "r1"})
    prom = Prometheus(tmp_path / "prom").start()
    try:
        prom.add_target("exporter", exporter.address)
        prom.add_target("training", sidecar.address)
        prom.wait_up("exporter")
        prom.wait_value('tunewatch_training_step{job="training"}', lambda v: v == 10)
        before = time.time()

        prom.stop()  # SIGTERM: a clean restart, as systemd or an upgrade does it
        status.write_text(json.dumps({"state": "training", "step": 20, "max_steps": 100}))
        assert "tunewatch_training_step" in sidecar.metrics()  # the exporters do not care
        assert exporter.proc is not None and exporter.proc.poll() is None
        prom.start()

        prom.wait_up("exporter")
        prom.wait_up("training")
        prom.wait_value('tunewatch_training_step{job="training"}', lambda v: v == 20)
        # Samples from before the restart survived in the TSDB (the WAL is replayed).
        old = prom.query(f'tunewatch_training_step{{job="training"}} @ {before:.3f}')
        assert old and float(old[0]["value"][1]) == 10
        for service in (exporter, sidecar):
            assert "Traceback" not in service.log_tail(200)
            rejected = [line for line in service.metrics().splitlines()
                        if line.startswith("tunewatch_exporter_http_requests_rejected_total")]
            assert all(line.endswith(" 0.0") for line in rejected), rejected
    finally:
        prom.stop()
        sidecar.stop()
        exporter.stop()
