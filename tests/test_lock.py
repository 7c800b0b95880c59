"""Installs are lean and locked: the core brings no torch, every pin is what the tests ran on.

Why: the exporter image and a host exporter's venv must not pull torch or transformers
(gigabytes, and a CUDA build the host may not want), and two machines must install the same
versions (constraints.txt, written by `make lock`). Read offline from the installed
metadata and the lock file; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

LOCK_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "lock.py"
# What the host exporter and the sidecar must run without (the core install lacks them).
NOT_CORE = ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "watchdog",
            "requests", "psycopg", "tqdm")


@pytest.fixture(scope="module")
def lock():  # the module scripts/lock.py, loaded from its file
    spec = importlib.util.spec_from_file_location("tunewatch_lock", LOCK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_core_reaches_neither_torch_nor_transformers(lock) -> None:
    core = lock.closure(lock.project_requirements([]))
    assert "prometheus-client" in core and "nvidia-ml-py" in core
    assert not set(core) & set(NOT_CORE), sorted(set(core) & set(NOT_CORE))


def test_the_eval_extra_brings_the_model_stack_and_the_lock_leaves_torch_free(lock) -> None:
    evaluator = lock.closure(lock.project_requirements(["eval", "postgres"]))
    assert {"transformers", "tokenizers", "watchdog", "requests", "psycopg"} <= set(evaluator)
    pins = lock.read_lock()
    assert "torch" not in pins
    assert not [name for name in pins if name.startswith(("nvidia-cu", "triton"))]


def test_every_dependency_is_pinned_to_what_is_installed(lock) -> None:
    """The environment the tests run in was installed from the lock, and the lock pins all
    of tunewatch[dev]: nothing floats."""
    wanted = lock.closure(lock.project_requirements(["dev"]))
    pins = lock.read_lock()
    assert not set(wanted) - set(pins), f"unpinned: {sorted(set(wanted) - set(pins))}"
    assert not set(pins) - set(wanted), f"stale pins: {sorted(set(pins) - set(wanted))}"
    differ = {name: (pins[name], wanted[name]) for name in pins if pins[name] != wanted[name]}
    assert not differ, f"lock != installed (run make lock or the bootstrap): {differ}"


def test_a_bad_lock_line_names_the_file_and_line(lock, tmp_path: Path) -> None:
    bad = tmp_path / "constraints.txt"
    bad.write_text("# header\nrequests==2.32.0\nnumpy>=2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"constraints.txt:3: expected name==version"):
        lock.read_lock(bad)


def test_exporter_and_sidecar_commands_import_nothing_beyond_the_core(repo_root: Path) -> None:
    """What a core install can run: the commands load with the other roles' packages
    unimportable (a meta-path finder refuses them, as their absence would)."""
    blocked = ", ".join(repr(name) for name in NOT_CORE)
    probe = textwrap.dedent(f"""
        import sys
        BLOCKED = {{{blocked}}}

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (core install)")
                return None

        sys.meta_path.insert(0, Refuse())
        import tunewatch.cli
        import tunewatch.commands.exporter
        import tunewatch.commands.training_sidecar
        import tunewatch.commands.config
        from exporters.training import TrainingMetrics, serve
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo_root, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_lock_is_current(repo_root: Path) -> None:
    done = subprocess.run([sys.executable, str(LOCK_SCRIPT), "--check"], cwd=repo_root,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_every_install_goes_through_the_lock(repo_root: Path) -> None:
    bootstrap = (repo_root / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")
    dockerfile = (repo_root / "Dockerfile").read_text(encoding="utf-8")
    assert "-c constraints.txt" in bootstrap
    assert "-c /src/constraints.txt" in dockerfile and "COPY pyproject.toml README.md " \
        "constraints.txt" in dockerfile
