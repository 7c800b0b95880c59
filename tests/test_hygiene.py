"""Repository conventions that a reviewer would otherwise have to check by eye."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def tracked_python_files(repo_root: Path) -> list[Path]:
    done = subprocess.run(["git", "ls-files", "*.py"], cwd=repo_root, capture_output=True,
                          text=True, check=False)
    if done.returncode == 0 and done.stdout.strip():
        return [repo_root / line for line in done.stdout.splitlines()]
    return [p for p in repo_root.rglob("*.py") if ".venv" not in p.parts]


def test_ruff_is_clean(repo_root: Path):
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=repo_root,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_python_sources_are_ascii_only(repo_root: Path):
    offenders = []
    for path in tracked_python_files(repo_root):
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if any(byte > 127 for byte in line):
                offenders.append(f"{path.relative_to(repo_root)}:{number}")
    assert not offenders, offenders
