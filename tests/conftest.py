"""Session fixtures: real monitoring services and the tiny real model.

Session scope keeps the suite fast: one Prometheus, one Alertmanager, one node_exporter, one
PostgreSQL and one trained tiny model serve every test; tests add their own scrape targets
(file-based discovery) so they do not disturb each other.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import Alertmanager, NodeExporter, Postgres, Prometheus

REPO = Path(__file__).resolve().parent.parent

TEST_ALERTMANAGER_CONFIG = """\
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path_factory.mktemp("prometheus")).start()
    yield prom
    prom.stop()


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    am = Alertmanager(tmp_path_factory.mktemp("alertmanager"), TEST_ALERTMANAGER_CONFIG).start()
    yield am
    am.stop()


@pytest.fixture(scope="session")
def node_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeExporter]:
    ne = NodeExporter(tmp_path_factory.mktemp("node_exporter")).start()
    yield ne
    ne.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres().start()
    yield pg
    pg.stop()
    pg.cleanup()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    """A trained tiny Qwen3 model: checkpoint-100/200/300 and an easy/medium/hard suite."""
    from tunewatch.demo.tinymodel import build_tiny_run

    return build_tiny_run(tmp_path_factory.mktemp("tiny"), max_steps=300, save_steps=100)


@pytest.fixture(scope="session")
def answer_key(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite with the last checkpoint's own greedy answers as its golden answers.

    For tests that need a checkpoint that answers right (a regression from it, a paired
    comparison): against its own answer key the last checkpoint is right by construction,
    whatever a few hundred training steps taught it on this machine.
    """
    from tunewatch.core.config import EvaluatorConfig
    from tunewatch.demo.tinymodel import answer_key_suite

    out = tmp_path_factory.mktemp("answer_key")
    kept = answer_key_suite(tiny_run.checkpoints[-1], tiny_run.data_dir, out,
                            EvaluatorConfig().max_new_tokens)
    assert kept > 0, "the last checkpoint ended no answer within max_new_tokens"
    return out
