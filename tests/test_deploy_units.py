"""The shipped systemd units: systemd accepts them, and each runs a real tunewatch command."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunewatch.cli import SUBCOMMANDS

UNITS = sorted((Path(__file__).resolve().parent.parent / "deploy" / "systemd").glob("*.service"))
VENV_TUNEWATCH = "/opt/tunewatch/.venv/bin/tunewatch"


def service(unit: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    return parser["Service"]


def test_units_exist():
    assert {u.name for u in UNITS} == {"tunewatch-exporter.service",
                                       "tunewatch-evaluator.service",
                                       "tunewatch-training-sidecar.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_runs_a_tunewatch_command_unprivileged(unit: Path):
    svc = service(unit)
    argv = svc["ExecStart"].split()
    assert argv[0] == VENV_TUNEWATCH
    assert argv[1] in SUBCOMMANDS
    assert svc["User"] == "tunewatch" and svc["Restart"] == "on-failure"
    assert svc["NoNewPrivileges"] == "true" and svc["ProtectSystem"] == "strict"
    # The command line parses (flags included) with this version of tunewatch.
    done = subprocess.run([sys.executable, "-m", "tunewatch", *argv[1:], "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_units(tmp_path: Path):
    """`systemd-analyze verify` on copies whose ExecStart points at this checkout's tunewatch
    (the shipped path exists only after installing to /opt/tunewatch)."""
    real = Path(sys.executable).parent / "tunewatch"
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace(VENV_TUNEWATCH, str(real)))
    done = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, tmp_path.glob("*")))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
