"""The architecture holds: layers enforced by import-linter, every module listed in README.

Why tests: CI runs only `make test`, so a back-arrow (a library importing a command, the
base importing a library) or a module nobody documented must fail here, not in a review.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = ("tunewatch", "exporters", "evaluators")
# Where the README's tables list modules: the three packages, the dashboards generator,
# benchmarks, scripts and the tests' own helper modules (test_*.py files, the tests
# themselves, are not listed).
LISTED_TREES = (*PACKAGES, "grafana/dashboards_src", "bench", "scripts", "tests")
ROW = re.compile(r"^\| `(?P<path>[^`]+\.py)` \| (?P<job>(?:[^|\\]|\\.)+?) \|$")


def lint_imports(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the tree at `root` (its pyproject.toml holds the contracts)."""
    binary = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(binary), "--no-cache", *extra], cwd=root, text=True,
                          capture_output=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def test_the_import_contracts_are_kept(repo_root: Path) -> None:
    done = lint_imports(repo_root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: " in done.stdout and " broken" in done.stdout


@pytest.mark.parametrize(("module", "back_arrow"), [
    ("exporters/server.py", "import tunewatch.cli"),
    ("tunewatch/core/errors.py", "import evaluators"),
    ("exporters/framework.py", "import evaluators.evaluate"),
])
def test_a_back_arrow_fails(repo_root: Path, tmp_path: Path, module: str,
                            back_arrow: str) -> None:
    """The contracts really catch what they forbid: a copy of the tree with one import
    running backwards fails lint-imports (so it would fail make test)."""
    copy = tmp_path / "tree"
    for name in PACKAGES:
        shutil.copytree(repo_root / name, copy / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo_root / "pyproject.toml", copy / "pyproject.toml")
    target = copy / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{back_arrow}  # noqa\n",
                      encoding="utf-8")
    done = lint_imports(copy)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout


def listed_modules(readme: str) -> dict[str, str]:
    """README's "Where things live" rows: `path.py` -> its one-line job."""
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line.strip())
        if match:
            rows[match["path"]] = match["job"].strip()
    return rows


def real_modules(root: Path) -> set[str]:
    """Every module a newcomer meets: package modules, benchmarks, scripts, test helpers."""
    found = set()
    for tree in LISTED_TREES:
        for path in (root / tree).rglob("*.py"):
            rel = path.relative_to(root).as_posix()
            if path.name in ("__init__.py", "__main__.py") or "__pycache__" in rel:
                continue
            if tree == "tests" and path.name.startswith("test_"):
                continue
            found.add(rel)
    return found


def test_readme_lists_every_module_with_its_job(repo_root: Path) -> None:
    listed = listed_modules((repo_root / "README.md").read_text(encoding="utf-8"))
    real = real_modules(repo_root)
    assert not real - set(listed), f"modules missing from README: {sorted(real - set(listed))}"
    assert not set(listed) - real, f"stale README entries: {sorted(set(listed) - real)}"
    assert all(len(job) >= 10 for job in listed.values()), "every module needs its job"


def test_each_subcommand_has_one_command_module(repo_root: Path) -> None:
    """One consistently named place: tunewatch/commands/<subcommand>.py, nothing else."""
    from tunewatch.cli import SUBCOMMANDS, command_module

    expected = {command_module(name).rsplit(".", 1)[1] + ".py" for name in SUBCOMMANDS}
    present = {p.name for p in (repo_root / "tunewatch" / "commands").glob("*.py")}
    assert present - {"__init__.py"} == expected
