"""Running a benchmark script the way `make bench` does, for the tests that smoke-run one.

Why one helper: every benchmark smoke test runs bench/<script> in a fresh interpreter with
--json, fails with the script's stderr when it exits non-zero and reads its figures from
stdout; written once, each test holds only its arguments and its assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout: float = 300) -> Any:
    """The figures of `python bench/SCRIPT --json ARGS...` run from the repository root;
    a failed run fails the test with the end of the script's stderr."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--json", *args],
        capture_output=True, text=True, check=False, timeout=timeout, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)
