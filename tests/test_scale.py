"""Scale: generated file_sd targets, the cardinality budget, an Alertmanager HA pair, and a
smoke run of the simulated fleet (bench/bench_fleet.py).

Why: these are the pieces a team uses when it grows past one machine (docs/scale.md); each
is checked by the real tool that consumes it (promtool, Prometheus, Alertmanager, amtool).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from benchsupport import run_bench
from services import LoopbackService, free_port, http_get, require_binary, wait_for

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from cardinality import budget, load_profiles  # noqa: E402
from fleet_targets import fleet_groups  # noqa: E402
from fleet_targets import main as fleet_main  # noqa: E402


def test_fleet_targets_files_pass_promtool(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    assert fleet_main(["--run", "r7", "--nodes", "3", "--gpus", "8", "--eval-hosts", "1",
                       "--host-pattern", "gpu{index:02d}.lab", "--out", str(targets)]) == 0
    training = yaml.safe_load((targets / "tunewatch-training" / "fleet-r7.yml").read_text())
    assert [g["targets"] for g in training] == [["gpu00.lab:9946"], ["gpu01.lab:9946"],
                                                ["gpu02.lab:9946"]]
    assert training[2]["labels"] == {"run": "r7", "host": "gpu02.lab", "role": "training",
                                     "rank": "2"}
    evaluator = yaml.safe_load((targets / "tunewatch-evaluator" / "fleet-r7.yml").read_text())
    assert evaluator == [{"targets": ["eval-00:9947"],
                          "labels": {"run": "r7", "host": "eval-00", "role": "eval"}}]
    exporter = yaml.safe_load((targets / "tunewatch-exporter" / "fleet-r7.yml").read_text())
    assert len(exporter) == 4
    # The repository's prometheus.yml reads them: promtool checks config and target files.
    shutil_copy = (REPO / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(shutil_copy.replace("rule_files:\n  - rules/*.yml",
                                                                 "rule_files: []"))
    done = promtool_check_config(tmp_path / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    # That pass covered the generated files: promtool reads file_sd targets, so the same
    # check fails, naming the job's target glob, once one generated file is damaged.
    training_file = targets / "tunewatch-training" / "fleet-r7.yml"
    training_file.write_text(training_file.read_text().replace("rank:", "bad-label:"))
    done = promtool_check_config(tmp_path / "prometheus.yml")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "tunewatch-training/*.yml" in out and "bad-label" in out, out


def promtool_check_config(config: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check config` on a Prometheus config (it also reads its file_sd files)."""
    return subprocess.run([require_binary("promtool"), "check", "config", str(config)],
                          capture_output=True, text=True, check=False, timeout=60)


def test_fleet_targets_loopback_ports_are_distinct() -> None:
    groups = fleet_groups("r", 64, 8, eval_hosts=1, loopback_base=30000)
    addresses = [g["targets"][0] for gs in groups.values() for g in gs]
    assert len(addresses) == len(set(addresses)) == 64 * 3 + 3


def test_cardinality_budget_from_recorded_outputs() -> None:
    profiles = load_profiles()
    assert {"exporter", "training", "evaluator"} <= set(profiles)
    small = budget(profiles, nodes=1, gpus=8, eval_hosts=1)
    fleet = budget(profiles, nodes=64, gpus=8, eval_hosts=1)
    per_gpu = fleet["per_unit"]["series_per_gpu"]
    assert 10 <= per_gpu <= 200  # the host exporter's GPU families, one series each
    assert fleet["series"]["gpu (host exporter)"] == round(64 * 8 * per_gpu)
    assert fleet["total_series"] > 30 * small["total_series"]
    assert fleet["per_unit"]["series_per_checkpoint"] > 0  # the ranking rows
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "cardinality.py"), "--nodes",
                          "64", "--gpus", "8", "--json"], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout)["total_series"] == fleet["total_series"]


class AlertmanagerPeer(LoopbackService):
    """One member of an Alertmanager cluster on loopback."""

    def __init__(self, workdir: Path, config: Path, cluster_port: int, peers: list[int]) -> None:
        super().__init__(f"alertmanager-{cluster_port}", workdir)
        self.argv = [require_binary("prometheus-alertmanager"), f"--config.file={config}",
                     f"--storage.path={workdir / str(cluster_port)}",
                     f"--web.listen-address={self.address}",
                     f"--cluster.listen-address=127.0.0.1:{cluster_port}",
                     "--cluster.advertise-address=" f"127.0.0.1:{cluster_port}",
                     *(f"--cluster.peer=127.0.0.1:{p}" for p in peers)]

    def start(self) -> AlertmanagerPeer:
        self.launch(self.argv, "/-/ready")
        return self

    def peers(self) -> int:
        _status, body = http_get(f"{self.url}/api/v2/status")
        return len(json.loads(body)["cluster"].get("peers") or [])


@pytest.mark.slow
def test_alertmanager_ha_pair(tmp_path: Path) -> None:
    """The repository's alertmanager.yml, as docs/scale.md runs it: two peers that gossip."""
    config = REPO / "alertmanager" / "alertmanager.yml"
    done = subprocess.run([require_binary("amtool"), "check-config", str(config)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # The Prometheus side of the pair, quoted from docs/scale.md, passes promtool.
    doc = (REPO / "docs" / "scale.md").read_text()
    block = re.search(r"```yaml\n(# prometheus\.yml: alerting.*?)```", doc, re.S)
    assert block, "docs/scale.md lacks the prometheus.yml alerting block"
    prom = tmp_path / "prometheus.yml"
    prom.write_text(block.group(1))
    done = promtool_check_config(prom)
    assert done.returncode == 0, done.stdout + done.stderr

    a_port, b_port = free_port(), free_port()
    a = AlertmanagerPeer(tmp_path, config, a_port, [b_port]).start()
    b = AlertmanagerPeer(tmp_path, config, b_port, [a_port]).start()
    try:
        wait_for(lambda: a.peers() == 2 and b.peers() == 2, 30, "the two peers to gossip")
    finally:
        a.stop()
        b.stop()


@pytest.mark.slow
def test_bench_fleet_smoke() -> None:
    figures = run_bench("bench_fleet.py", "--smoke", "--seconds", "3", timeout=240)
    assert figures["targets_up"] == figures["targets"] == 4 * 3 + 3
    assert figures["head_series"] > figures["samples_per_round"] * 0.5
    assert figures["scrape_duration_p99_ms"] is not None
    assert figures["prometheus_rss_mib"] > 0
