"""scripts/record_gpu_fixture.py: what it writes, dry-run from a recording, and without NVML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from services import require_binary

from exporters.collectors.gpu.recorded import recording_from_dict

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"


def run_script(repo_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(repo_root / "scripts" / "record_gpu_fixture.py"),
                           *args], capture_output=True, text=True, check=False, timeout=60)


def test_dry_run_writes_a_replayable_recording(repo_root: Path, tmp_path: Path):
    require_binary("promtool")  # the script lints with it when installed; the bootstrap does
    done = run_script(repo_root, "--out", str(tmp_path), "--scrapes", "3", "--interval", "0",
                      "--from-recording", str(FIXTURES / "h100-load.json"))
    assert done.returncode == 0, done.stderr
    recorded = recording_from_dict(json.loads((tmp_path / "readings.json").read_text()))
    with open(FIXTURES / "h100-load.json", encoding="utf-8") as fh:
        original = recording_from_dict(json.load(fh))
    assert recorded.snapshots == original.snapshots * 3
    assert recorded.memory_samples == [{0: 20780679168}] * 3
    exposition = (tmp_path / "exposition.prom").read_text()
    assert 'tunewatch_gpu_info{cuda_version="13.1"' in exposition
    assert (tmp_path / "promtool.txt").read_text().strip() == ""
    latency = json.loads((tmp_path / "latency.json").read_text())
    assert latency["scrape_seconds"]["count"] == 3
    assert 0 < latency["scrape_seconds"]["min"] <= latency["scrape_seconds"]["max"]


def test_unavailable_nvml_exits_2_with_the_reason(repo_root: Path, tmp_path: Path):
    done = run_script(repo_root, "--out", str(tmp_path),
                      "--from-recording", str(FIXTURES / "no-nvml.json"))
    assert done.returncode == 2
    assert "library_not_found" in done.stderr
    assert not (tmp_path / "readings.json").exists()


def test_real_nvml_here(repo_root: Path, tmp_path: Path):
    """On this machine: no driver means exit 2 naming what nvmlInit raised."""
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("a GPU host: record for real with the script instead")
    done = run_script(repo_root, "--out", str(tmp_path), "--scrapes", "1")
    assert done.returncode == 2
    assert "library_not_found" in done.stderr
