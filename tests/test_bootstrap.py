"""The bootstrap shared by `make up` and `make test` is idempotent and quiet when done."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def test_second_bootstrap_does_nothing_and_says_nothing(repo_root: Path):
    venv = repo_root / ".venv"
    env = {**os.environ, "VENV": str(venv)}
    first = subprocess.run(["scripts/bootstrap.sh"], cwd=repo_root, env=env,
                           capture_output=True, text=True, check=False, timeout=1200)
    assert first.returncode == 0, first.stderr
    stamp = (venv / ".tunewatch-installed").stat().st_mtime
    again = subprocess.run(["scripts/bootstrap.sh"], cwd=repo_root, env=env,
                           capture_output=True, text=True, check=False, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "" and again.stderr == ""
    assert (venv / ".tunewatch-installed").stat().st_mtime == stamp
    torch_version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert torch_version.strip()


def test_make_test_turns_no_tests_ran_into_a_failure(repo_root: Path):
    done = subprocess.run(
        ["make", "-s", "test", "PYTEST_ARGS=-q -p no:cacheprovider -k no_test_has_this_name"],
        cwd=repo_root, capture_output=True, text=True, check=False, timeout=600,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert "collected no tests" in done.stderr
