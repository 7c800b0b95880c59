"""The libraries type-check: mypy, configured in pyproject.toml's [tool.mypy], finds nothing.

Why a test: CI runs only `make test`, so a missing annotation or a None passed where a value
is required must fail here. mypy keeps its cache in the repository's .mypy_cache (ignored by
git): a first run reads torch's and transformers' annotations (about a minute on two cores),
later runs only what changed (seconds).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("tunewatch", "exporters", "evaluators")
# A cold run reads torch and transformers; the limit is far above it so that only a hang fails.
MYPY_TIMEOUT_SECONDS = 600
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")

# One probe per option the configuration promises, with the error code each must raise.
PROBE = '''\
"""Type errors the strict options must catch."""


def untyped():
    return 1 + ""


def implicit(value: int = None) -> int:
    return value


UNUSED = 1  # type: ignore[assignment]
'''
PROBE_ERRORS = {
    (4, "no-untyped-def"),  # disallow_untyped_defs
    (5, "operator"),  # check_untyped_defs: the body of an unannotated function is checked
    (8, "assignment"),  # no_implicit_optional: `= None` does not make `int` optional
    (12, "unused-ignore"),  # warn_unused_ignores
}


def mypy(root: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """mypy over the tree at `root` (its pyproject.toml names the packages and options)."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-color-output"],
        cwd=root, text=True, capture_output=True, timeout=MYPY_TIMEOUT_SECONDS)


def test_the_libraries_type_check(repo_root: Path) -> None:
    done = mypy(repo_root, repo_root / ".mypy_cache")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Success:"), done.stdout


def test_the_strict_options_are_on(repo_root: Path, tmp_path: Path) -> None:
    """The check really catches what the options forbid: a copy of the tree with one module
    of type errors fails mypy with each option's error at its line (the shared cache keeps
    the third-party modules warm)."""
    copy = tmp_path / "tree"
    for name in PACKAGES:
        shutil.copytree(repo_root / name, copy / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo_root / "pyproject.toml", copy / "pyproject.toml")
    probe = copy / "exporters" / "typeprobe.py"
    probe.write_text(PROBE, encoding="utf-8")
    done = mypy(copy, repo_root / ".mypy_cache")
    assert done.returncode == 1, done.stdout + done.stderr
    found = set()
    for line in done.stdout.splitlines():
        match = ERROR.match(line)
        if match and Path(match["path"]) == probe.relative_to(copy):
            found.add((int(match["line"]), match["code"]))
    assert found == PROBE_ERRORS, done.stdout
