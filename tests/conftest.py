"""Session fixtures: real monitoring services and the tiny real model.

Session scope keeps the suite fast: one Prometheus, one Alertmanager, one node_exporter, one
PostgreSQL and one trained tiny model serve every test; tests add their own scrape targets
(file-based discovery) so they do not disturb each other.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import Alertmanager, NodeExporter, Postgres, Prometheus, missing_binary_message

REPO = Path(__file__).resolve().parent.parent

# What scripts/bootstrap.sh installs (its Debian packages). Tests that run one of them
# directly, without services.require_binary, still fail naming the bootstrap when it is
# missing: a missing tool is a broken test machine, never a skip.
BOOTSTRAPPED_BINARIES = frozenset({
    "prometheus", "promtool", "prometheus-alertmanager", "amtool", "prometheus-node-exporter",
    "postgres", "psql",
})

TEST_ALERTMANAGER_CONFIG = """\
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""


def missing_bootstrapped_binary(excinfo: pytest.ExceptionInfo[BaseException] | None) -> str:
    """The bootstrapped binary a FileNotFoundError is about, or "" for any other outcome."""
    if excinfo is None or not isinstance(excinfo.value, FileNotFoundError):
        return ""
    name = Path(str(excinfo.value.filename or "")).name
    return name if name in BOOTSTRAPPED_BINARIES else ""


def pytest_sessionstart(session: pytest.Session) -> None:
    """SIGTERM (a CI timeout, `timeout`, a killed job) stops the run as Ctrl-C does.

    Why: pytest runs the fixtures' teardown on KeyboardInterrupt but not on SIGTERM, whose
    default action ends the process at once and leaves every service this suite started
    (Prometheus, Alertmanager, node_exporter, PostgreSQL) running on the machine."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the bootstrap hint to a failure caused by running a missing bootstrapped binary."""
    report = yield
    missing = missing_bootstrapped_binary(call.excinfo)
    if missing and report.failed:
        report.sections.append(("missing binary", missing_binary_message(missing)))
    return report


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
