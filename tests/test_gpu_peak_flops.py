"""The boards' peak FLOPS table, its matching rules, its metrics and its configuration key.

Why these rules: MFU divides by the peak, so a board the table misses must show as absent
and counted (never as 0, which would make MFU infinite), a configured figure must win over
the built-in one, and a board name spelt as an older driver or a hand-written config spells
it must still find its entry. The recorded fixtures carry the names NVML really returns.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from services import promtool_check_metrics

from exporters.collectors.gpu.families import peak_flops_families, snapshot_families
from exporters.collectors.gpu.peak_flops import (
    BF16_DENSE_PEAK_FLOPS,
    PRECISION,
    VENDOR_PREFIX,
    PeakFlopsTable,
    normalise_board,
)
from exporters.collectors.gpu.readings import GpuReading, GpuSnapshot
from exporters.collectors.gpu.recorded import recording_from_dict
from tunewatch.core.config import ConfigError, load_config

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"
PEAK = "tunewatch_gpu_peak_flops"
UNKNOWN = "tunewatch_gpu_peak_flops_unknown_boards"
# The boards issue 22 names, as NVML spells them: each must be in the table.
REQUIRED_BOARDS = (
    "NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 4090",
    "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-PCIE-40GB",
    "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200",
    "NVIDIA L40S",
)
# A board no table will ever hold.
NO_SUCH_BOARD = "NVIDIA Imaginary X1"


def fixture_boards() -> set[str]:
    """Every board name in the recorded fixtures (the strings NVML returned)."""
    names: set[str] = set()
    for path in sorted(FIXTURES.glob("*.json")):
        recording = recording_from_dict(json.loads(path.read_text()), path.name)
        for snap in recording.snapshots:
            if isinstance(snap, GpuSnapshot):
                names.update(g.name for g in snap.gpus)
    return names


def gpu(index: int, name: str) -> GpuReading:
    return GpuReading(index=index, uuid=f"GPU-{index:08d}", name=name)


def samples(families: list[Metric]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


def peak_key(reading: GpuReading) -> tuple[str, frozenset[tuple[str, str]]]:
    labels = {"gpu": str(reading.index), "uuid": reading.uuid, "precision": PRECISION}
    return (PEAK, frozenset(labels.items()))


# --------------------------------------------------------------------------- the table


def test_every_board_the_issue_names_is_in_the_table():
    assert [b for b in REQUIRED_BOARDS if b not in BF16_DENSE_PEAK_FLOPS] == []


def test_every_recorded_board_is_in_the_table():
    boards = fixture_boards()
    assert boards, "no board names in the recorded fixtures"
    assert sorted(b for b in boards if b not in BF16_DENSE_PEAK_FLOPS) == []


def test_every_figure_is_a_finite_positive_flops_value():
    bad = {n: v for n, v in BF16_DENSE_PEAK_FLOPS.items() if not (math.isfinite(v) and v > 0)}
    assert bad == {}


def test_no_two_names_share_a_normalised_form():
    """Otherwise which figure a normalised lookup finds would depend on the table's order."""
    forms = [normalise_board(name) for name in BF16_DENSE_PEAK_FLOPS]
    assert len(forms) == len(set(forms))


def test_boards_of_one_chip_and_clock_share_a_figure():
    """A100 40/80 GB SXM4 and PCIe: one GA100 rate; H200 is the H100 SXM's GH100 rate."""
    a100 = {v for n, v in BF16_DENSE_PEAK_FLOPS.items() if "A100" in n}
    assert len(a100) == 1
    assert BF16_DENSE_PEAK_FLOPS["NVIDIA H200"] == BF16_DENSE_PEAK_FLOPS["NVIDIA H100 80GB HBM3"]


def test_datacenter_sxm_board_outranks_its_pcie_sibling():
    assert BF16_DENSE_PEAK_FLOPS["NVIDIA H100 80GB HBM3"] > BF16_DENSE_PEAK_FLOPS[
        "NVIDIA H100 PCIe"]


def test_docs_list_every_board_with_its_figure():
    """docs/gpu.md's table is what users read: each board and its TFLOPS as the code has it."""
    docs = (Path(__file__).parent.parent / "docs" / "gpu.md").read_text()
    rows = [line for line in docs.splitlines() if line.startswith("| `NVIDIA ")]
    for board, flops in BF16_DENSE_PEAK_FLOPS.items():
        tflops = f"{flops / 1e12:g}"
        assert any(f"`{board}`" in row and f"| {tflops} |" in row for row in rows), board


# --------------------------------------------------------------------------- matching


@pytest.mark.parametrize("board", sorted(BF16_DENSE_PEAK_FLOPS))
def test_exact_and_respelt_names_find_the_same_figure(board: str):
    table = PeakFlopsTable()
    figure = BF16_DENSE_PEAK_FLOPS[board]
    older_driver = board[len(VENDOR_PREFIX):]  # no "NVIDIA " before R470
    assert table.lookup(board) == figure
    assert table.lookup(f"  {board.upper()} ".replace(" ", "  ")) == figure
    assert table.lookup(older_driver) == figure


def test_an_unknown_board_has_no_figure():
    assert PeakFlopsTable().lookup(NO_SUCH_BOARD) is None
    assert PeakFlopsTable().lookup("") is None


def test_the_exact_name_is_tried_before_the_normalised_one():
    table = PeakFlopsTable(table={"Board X": 1.0, "board  x": 2.0})
    assert table.lookup("board  x") == 2.0
    assert table.lookup("Board X") == 1.0
    assert table.lookup("BOARD X") == 1.0  # normalised: the first spelling of the form


def test_a_configured_figure_wins_even_when_spelt_differently():
    board = "NVIDIA H100 80GB HBM3"
    override = BF16_DENSE_PEAK_FLOPS[board] / 2
    table = PeakFlopsTable({normalise_board(board): override})
    assert table.lookup(board) == override
    assert table.lookup("NVIDIA GeForce RTX 4090") == BF16_DENSE_PEAK_FLOPS[
        "NVIDIA GeForce RTX 4090"]  # the rest of the table still answers


def test_configuration_extends_the_table():
    assert PeakFlopsTable({NO_SUCH_BOARD: 1e14}).lookup(NO_SUCH_BOARD) == 1e14


# --------------------------------------------------------------------------- families


def test_known_boards_publish_the_table_value_and_unknown_ones_are_counted():
    known, unknown, other_unknown = gpu(0, "NVIDIA H200"), gpu(1, NO_SUCH_BOARD), gpu(2, "")
    got = samples(peak_flops_families([known, unknown, other_unknown], PeakFlopsTable()))
    assert got == {peak_key(known): BF16_DENSE_PEAK_FLOPS["NVIDIA H200"],
                   (UNKNOWN, frozenset()): 2.0}


def test_all_unknown_publishes_only_the_count():
    families = peak_flops_families([gpu(0, NO_SUCH_BOARD)], PeakFlopsTable())
    assert [f.name for f in families] == [UNKNOWN]
    assert samples(families) == {(UNKNOWN, frozenset()): 1.0}


def test_no_gpus_read_counts_zero():
    assert samples(peak_flops_families([], PeakFlopsTable())) == {(UNKNOWN, frozenset()): 0.0}


def test_a_snapshot_publishes_the_configured_figure():
    reading = gpu(0, "NVIDIA GeForce RTX 3090")
    snap = GpuSnapshot(gpus=[reading])
    default = samples(snapshot_families(snap, max_processes=16))
    configured = samples(snapshot_families(snap, max_processes=16, peak_flops=PeakFlopsTable(
        {"NVIDIA GeForce RTX 3090": 7.0e13})))
    assert default[peak_key(reading)] == BF16_DENSE_PEAK_FLOPS["NVIDIA GeForce RTX 3090"]
    assert configured[peak_key(reading)] == 7.0e13


class Given:
    """A registry collector that yields fixed families (for the text encoder)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def test_the_exposition_passes_promtool():
    families = peak_flops_families([gpu(0, "NVIDIA L40S"), gpu(1, NO_SUCH_BOARD)],
                                   PeakFlopsTable())
    registry = CollectorRegistry()
    registry.register(Given(families))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert f'{PEAK}{{gpu="0",precision="bf16",uuid="GPU-00000000"}}' in text
    assert promtool_check_metrics(text) == ""


# --------------------------------------------------------------------------- configuration


def test_the_configuration_key_loads_as_float_figures(tmp_path: Path):
    path = tmp_path / "tunewatch.yml"
    path.write_text('exporter:\n  gpu_peak_flops: {"NVIDIA A10": 125000000000000}\n')
    assert load_config(path, environ={}).exporter.gpu_peak_flops == {"NVIDIA A10": 1.25e14}


@pytest.mark.parametrize("bad", ["0", "-1.0e+14", ".nan", ".inf"])
def test_a_figure_not_above_zero_gives_one_error_naming_the_key(tmp_path: Path, bad: str):
    path = tmp_path / "tunewatch.yml"
    path.write_text(f'exporter:\n  gpu_peak_flops:\n    "NVIDIA A10": 1.0e+14\n    "B": {bad}\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    lines = [line.strip() for line in str(err.value).splitlines()[1:]]
    assert len(lines) == 1, lines
    assert "key 'exporter.gpu_peak_flops': must be above 0" in lines[0], lines
