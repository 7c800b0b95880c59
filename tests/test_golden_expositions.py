"""Golden expositions: what the host exporter serves from each recorded GPU fixture, byte for
byte (node_exporter's `e2e-output.txt` pattern).

Why: the conversion tests (tests/test_gpu_convert.py) check named values, so a new family,
a changed HELP text, a reordered label or a value formatted differently goes through them
unseen, and the recorded fixtures drift from what Prometheus receives. A golden file pins
every byte of a scrape, so any such change is a diff someone reviews and commits.

How one is made: the real collector, `GpuCollector` over a `RecordedReader` of
tests/fixtures/gpu/<name>.json, alone in a registry, rendered by
`exporters.exposition.render_text` (the bytes the server sends uncompressed, without the
framework's per-collector success/duration metrics: the duration is a timing). Scrape n of
a fixture becomes tests/fixtures/expositions/gpu/<name>.scrape<n>.prom; a fixture gets one
scrape per recorded snapshot, memory sample or XID batch, whichever list is longest.

What is fixed so the bytes are the same on every machine and every run: the XID timestamps
come from a fixed clock; the background threads get nothing to do (the memory sampler's
interval is far beyond any test, the recorded XID batches and memory samples are taken from
the reader up front) and their work is done here in recorded order: before scrape n,
memory sample n and XID batch n are handed to the trackers, as the threads would between
two scrapes. No process or Python metrics are in the registry.

Regenerate after an intended change, then review `git diff tests/fixtures/expositions`:

    TUNEWATCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_expositions.py

With the variable set the test writes the files and fails naming them, so a regeneration
is never a silent pass; run it again without the variable to see it green.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from services import promtool_check_metrics

from exporters.collectors.gpu.collector import GpuCollector
from exporters.collectors.gpu.recorded import RecordedReader, Recording, recording_from_dict
from exporters.exposition import render_text
from tunewatch.core.config import ExporterConfig

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"
GOLDEN_DIR = Path(__file__).parent / "fixtures" / "expositions" / "gpu"
UPDATE_VARIABLE = "TUNEWATCH_UPDATE_GOLDEN"

# The Unix time every XID is stamped with (2023-11-14T22:13:20Z): any fixed value will do.
FIXED_CLOCK_SECONDS = 1_700_000_000.0
# The memory sampler thread waits this long before its first sample: never, in a test.
SAMPLER_IDLE_SECONDS = 24 * 3600.0
# A read past its deadline is a different exposition (reason="timeout"); a recorded read
# takes microseconds, so a deadline this far off holds even on a loaded test machine.
READ_TIMEOUT_SECONDS = 60.0
# Lines of a unified diff shown when a golden differs (the rest is in the files).
DIFF_LINES_SHOWN = 60


@dataclass(frozen=True)
class Golden:
    """One golden file: scrape `scrape` (1-based) of the recorded fixture `fixture`."""

    fixture: str
    scrape: int

    @property
    def path(self) -> Path:
        return GOLDEN_DIR / f"{Path(self.fixture).stem}.scrape{self.scrape}.prom"

    @property
    def id(self) -> str:
        return self.path.name


def load_recording(fixture: str) -> Recording:
    with open(FIXTURES / fixture, encoding="utf-8") as fh:
        return recording_from_dict(json.load(fh), fixture)


def scrape_count(recording: Recording) -> int:
    """Enough scrapes to serve every recorded snapshot, memory sample and XID batch."""
    return max(len(recording.snapshots), len(recording.memory_samples),
               len(recording.xid_batches))


def goldens() -> list[Golden]:
    """Every golden file the recorded fixtures call for, in fixture and scrape order."""
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        count = scrape_count(load_recording(path.name))
        out.extend(Golden(path.name, n) for n in range(1, count + 1))
    return out


GOLDENS = goldens()


@functools.cache
def render_scrapes(fixture: str) -> tuple[bytes, ...]:
    """Every scrape of the fixture as the exporter renders it, made deterministic (above)."""
    recording = load_recording(fixture)
    reader = RecordedReader(recording)
    # Taken up front so the XID thread, once started, finds none left to race us for.
    samples = [reader.sample_memory() for _ in recording.memory_samples]
    batches = [reader.wait_xid_events(0.0) for _ in recording.xid_batches]
    collector = GpuCollector(
        reader,
        max_processes=ExporterConfig().gpu_max_processes,
        sample_interval_seconds=SAMPLER_IDLE_SECONDS,
        read_timeout_seconds=READ_TIMEOUT_SECONDS,
        clock=lambda: FIXED_CLOCK_SECONDS,
    )
    registry = CollectorRegistry()
    registry.register(collector)
    texts = []
    try:
        for n in range(scrape_count(recording)):
            if n < len(samples):
                collector.peaks.observe(samples[n])
            if n < len(batches):
                collector.xids.record(batches[n])
            texts.append(render_text(registry))
    finally:
        collector.close()
    return tuple(texts)


def rendered(golden: Golden) -> bytes:
    return render_scrapes(golden.fixture)[golden.scrape - 1]


def diff(expected: bytes, actual: bytes, name: str) -> str:
    lines = list(difflib.unified_diff(expected.decode().splitlines(),
                                      actual.decode().splitlines(),
                                      f"{name} (golden)", f"{name} (rendered)", lineterm=""))
    shown = "\n".join(lines[:DIFF_LINES_SHOWN])
    more = len(lines) - DIFF_LINES_SHOWN
    return shown + (f"\n... {more} more diff lines" if more > 0 else "")


def regenerate_hint() -> str:
    return (f"regenerate with `{UPDATE_VARIABLE}=1 .venv/bin/python -m pytest "
            "tests/test_golden_expositions.py`, review the diff, commit")


def test_every_fixture_has_goldens_to_compare():
    assert GOLDENS, f"no recorded fixtures under {FIXTURES}"
    assert {g.fixture for g in GOLDENS} == {p.name for p in FIXTURES.glob("*.json")}


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda g: g.id)
def test_exposition_matches_golden(golden: Golden):
    actual = rendered(golden)
    if os.environ.get(UPDATE_VARIABLE) == "1":
        before = golden.path.read_bytes() if golden.path.exists() else None
        golden.path.parent.mkdir(parents=True, exist_ok=True)
        golden.path.write_bytes(actual)
        state = "unchanged" if before == actual else "written anew"
        pytest.fail(f"{UPDATE_VARIABLE}=1: regenerated {golden.path} ({state}); review "
                    f"`git diff {GOLDEN_DIR}`, then run again without {UPDATE_VARIABLE}")
    assert golden.path.exists(), f"{golden.path} missing: {regenerate_hint()}"
    expected = golden.path.read_bytes()
    assert actual == expected, (f"{golden.id} differs from what the exporter renders "
                                f"({regenerate_hint()} if intended):\n"
                                + diff(expected, actual, golden.id))


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda g: g.id)
def test_golden_passes_promtool(golden: Golden):
    assert golden.path.exists(), f"{golden.path} missing: {regenerate_hint()}"
    assert promtool_check_metrics(golden.path.read_text(encoding="utf-8")) == ""


def test_no_golden_without_its_fixture_scrape():
    """A golden whose fixture (or scrape) went away would never be compared again."""
    expected = {g.path.name for g in GOLDENS}
    orphans = sorted(p.name for p in GOLDEN_DIR.glob("*.prom") if p.name not in expected)
    assert not orphans, f"goldens with no fixture scrape behind them: {orphans}"


def test_scrapes_are_repeatable():
    """The same fixture rendered twice gives the same bytes: nothing time- or thread-
    dependent reached the exposition (else a golden would pass or fail by chance)."""
    for fixture in sorted({g.fixture for g in GOLDENS}):
        first = render_scrapes(fixture)
        render_scrapes.cache_clear()
        assert render_scrapes(fixture) == first, fixture
