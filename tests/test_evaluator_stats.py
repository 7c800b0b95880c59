"""The evaluator's statistics, curriculum rule, discovery rule and state file, on hand-made data.

No model here: paired outcomes are written out so every expected number can be checked by
hand (the McNemar values are binomial tails of Bin(b + c, 1/2)).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from catalogue import section_rows

from evaluators.compare import compare, paired
from evaluators.curriculum import recommended_mix
from evaluators.discovery import Scanner
from evaluators.ranking import rank
from evaluators.state import State, StateError, load, save
from evaluators.stats import PairedTable, mcnemar_exact_p, paired_difference_interval
from tunewatch.core.config import RegressionConfig


def test_mcnemar_hand_computed():
    assert mcnemar_exact_p(6, 0) == pytest.approx(0.03125)
    assert mcnemar_exact_p(0, 6) == pytest.approx(0.03125)
    assert mcnemar_exact_p(1, 1) == 1.0
    assert mcnemar_exact_p(0, 0) == 1.0
    # b=5, c=1: 2 * (1 + 6) / 64
    assert mcnemar_exact_p(5, 1) == pytest.approx(14 / 64)


def _drop(n: int, drop: int) -> tuple[list[bool], list[bool]]:
    """n paired examples, 25 right before; `drop` of those now wrong, nothing fixed."""
    before = [i < 25 for i in range(n)]
    now = [i < 25 - drop for i in range(n)]
    return now, before


def test_two_of_fifty_is_noise_twelve_is_not():
    small = paired(*_drop(50, 2))
    assert (small.broken, small.fixed) == (2, 0)
    assert small.p_value == pytest.approx(0.5)
    assert small.p_value > 0.05
    large = paired(*_drop(50, 12))
    assert (large.broken, large.fixed, large.examples) == (12, 0, 50)
    assert large.p_value == pytest.approx(2 / 4096)
    assert large.p_value < 0.01
    assert large.difference == pytest.approx(-0.24)
    assert large.difference_low < -0.24 < large.difference_high < 0


def test_difference_interval_matches_the_published_example():
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017),
    # chapter 8, Cavo et al. (2012): paired 2x2 table [[59, 6], [16, 80]], Newcombe's
    # square-and-add interval: estimate -0.0621, 95% CI -0.1186 to -0.0046.
    low, high = paired_difference_interval(PairedTable(both=59, fixed=6, broken=16, neither=80))
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    now = [True] * 59 + [True] * 6 + [False] * 16 + [False] * 80
    before = [True] * 59 + [False] * 6 + [True] * 16 + [False] * 80
    p = paired(now, before)
    assert round(p.difference, 4) == -0.0621
    assert (p.difference_low, p.difference_high) == (low, high)


def test_difference_interval_keeps_a_width_without_discordant_pairs():
    # Wald's interval is the single point 0 here; two equal checkpoints on 50 examples do
    # not prove their exact match equal.
    p = paired([True] * 25 + [False] * 25, [True] * 25 + [False] * 25)
    assert p.difference == 0.0
    assert p.difference_low < -0.02 and p.difference_high > 0.02
    assert p.difference_low == pytest.approx(-p.difference_high)


def test_difference_interval_is_antisymmetric_and_bounded():
    table = PairedTable(both=3, fixed=1, broken=9, neither=2)
    low, high = paired_difference_interval(table)
    swapped = PairedTable(both=3, fixed=9, broken=1, neither=2)
    assert paired_difference_interval(swapped) == pytest.approx((-high, -low))
    assert -1.0 <= low < (1 - 9) / 15 < high <= 1.0
    all_broken_low, all_broken_high = paired_difference_interval(PairedTable(0, 0, 12, 0))
    assert all_broken_low == -1.0 < all_broken_high < 0.0


def _exact_coverage(n: int, probs: tuple[float, float, float, float],
                    interval: Callable[[PairedTable], tuple[float, float]]) -> float:
    """P(interval covers the true difference), summed over every table of n pairs."""
    theta = probs[1] - probs[2]
    covered = 0.0
    for both in range(n + 1):
        for fixed in range(n + 1 - both):
            for broken in range(n + 1 - both - fixed):
                counts = (both, fixed, broken, n - both - fixed - broken)
                log_p = math.lgamma(n + 1) + sum(k * math.log(p) - math.lgamma(k + 1)
                                                 for k, p in zip(counts, probs, strict=True))
                low, high = interval(PairedTable(*counts))
                if low - 1e-12 <= theta <= high + 1e-12:
                    covered += math.exp(log_p)
    return covered


def _wald(table: PairedTable) -> tuple[float, float]:
    n, b, c = table.total, table.broken, table.fixed
    half = 1.959964 * math.sqrt(max(0.0, (b + c) - (c - b) ** 2 / n)) / n
    return (c - b) / n - half, (c - b) / n + half


@pytest.mark.parametrize("probs", [(0.6, 0.02, 0.08, 0.3), (0.3, 0.1, 0.2, 0.4),
                                   (0.45, 0.05, 0.1, 0.4)])
def test_difference_interval_covers_at_small_counts(probs: tuple[float, float, float, float]):
    # Exact coverage over all 5,456 tables of 30 pairs, for checkpoints that differ on a
    # few examples: the nominal 95% holds where the Wald interval falls short.
    newcombe = _exact_coverage(30, probs, paired_difference_interval)
    assert newcombe >= 0.945
    assert newcombe > _exact_coverage(30, probs, _wald)


def _outcomes(flags: list[bool], difficulty: str = "easy", offset: int = 0):
    return {f"k{i + offset}": (f, difficulty) for i, f in enumerate(flags)}


def test_regression_needs_size_and_significance():
    rules = RegressionConfig()
    now, before = _drop(50, 12)
    comp = compare(_outcomes(now), _outcomes(before), baseline="previous", baseline_step=100,
                   rules=rules)
    assert comp is not None and comp.regression
    now, before = _drop(50, 2)
    comp = compare(_outcomes(now), _outcomes(before), baseline="previous", baseline_step=100,
                   rules=rules)
    assert comp is not None and not comp.regression
    # A significant drop smaller than the 5-point threshold is not a regression.
    before = [True] * 200 + [False] * 200
    now = [i >= 8 for i in range(200)] + [False] * 200
    comp = compare(_outcomes(now), _outcomes(before), baseline="best", baseline_step=1,
                   rules=rules)
    assert comp is not None and comp.overall.p_value < 0.01 and not comp.regression


def test_regression_in_one_difficulty():
    rules = RegressionConfig()
    hard_now, hard_before = _drop(50, 12)
    easy = [True] * 200
    now = {**_outcomes(easy, "easy"), **_outcomes(hard_now, "hard", offset=1000)}
    before = {**_outcomes(easy, "easy"), **_outcomes(hard_before, "hard", offset=1000)}
    comp = compare(now, before, baseline="previous", baseline_step=5, rules=rules)
    assert comp is not None
    assert -comp.overall.difference < rules.min_drop_overall  # 12/250 overall
    assert comp.per_difficulty["hard"].p_value < 0.01
    assert comp.regression


def test_compare_pairs_only_shared_examples():
    now = {"a": (True, "easy"), "b": (True, "easy"), "only_now": (False, "easy")}
    before = {"a": (False, "easy"), "b": (True, "easy"), "only_before": (True, "easy")}
    comp = compare(now, before, baseline="previous", baseline_step=1, rules=RegressionConfig())
    assert comp is not None
    assert (comp.overall.examples, comp.overall.fixed, comp.overall.broken) == (2, 1, 0)
    assert compare({"x": (True, "e")}, {"y": (True, "e")}, baseline="best", baseline_step=1,
                   rules=RegressionConfig()) is None


def test_ranking_last_k():
    entries = [(100, "checkpoint-100", 0.9, 0.5), (200, "checkpoint-200", 0.3, 0.2),
               (300, "checkpoint-300", 0.5, 0.4), (400, "checkpoint-400", 0.5, 0.4),
               (500, "checkpoint-500", None, 0.9)]
    ranked = rank(entries, last_k=4)
    assert [(r.rank, r.step) for r in ranked] == [(1, 400), (2, 300), (3, 200), (4, 500)]


def test_curriculum_rule():
    mix = recommended_mix({"easy": 0.9, "medium": 0.7, "hard": 0.4}, 0.1)
    assert mix == pytest.approx({"easy": 0.17, "medium": 0.31, "hard": 0.52})
    assert sum(mix.values()) == pytest.approx(1.0)
    assert recommended_mix({"easy": 1.0, "hard": 1.0}, 0.1) == {"easy": 0.5, "hard": 0.5}
    # The floor is capped at 1/n.
    assert recommended_mix({"a": 0.0, "b": 1.0}, 0.9) == pytest.approx({"a": 0.5, "b": 0.5})
    assert recommended_mix({}, 0.1) == {}


def test_scanner_settle_and_trainer_state(tmp_path):
    now = [1000.0]
    scanner = Scanner(tmp_path, settle_seconds=2.0, clock=lambda: now[0])
    ckpt = tmp_path / "checkpoint-10"
    ckpt.mkdir()
    (tmp_path / "not-a-checkpoint").mkdir()
    (ckpt / "config.json").write_text("{}")
    [c] = scanner.scan()
    assert (c.step, c.complete) == (10, False)
    now[0] += 1.5
    (ckpt / "model.safetensors").write_bytes(b"x" * 10)  # still being written
    assert not scanner.scan()[0].complete
    now[0] += 1.9
    assert not scanner.scan()[0].complete
    now[0] += 0.2
    assert scanner.scan()[0].complete  # unchanged for 2.1 s
    later = tmp_path / "checkpoint-20"
    later.mkdir()
    (later / "trainer_state.json").write_text('{"global_step": 2')  # half written
    assert [(c.step, c.complete) for c in scanner.scan()] == [(20, False), (10, True)]
    (later / "trainer_state.json").write_text('{"global_step": 20}')
    assert [(c.step, c.complete) for c in scanner.scan()] == [(20, True), (10, True)]


def test_state_roundtrip_and_atomic_write(tmp_path):
    state = State()
    state.checkpoints[100] = {"checkpoint": "checkpoint-100", "status": "ok",
                              "exact_match": 0.5}
    state.checkpoints[200] = {"checkpoint": "checkpoint-200", "status": "ok",
                              "exact_match": 0.4}
    state.outcomes[100] = {"a": (True, "easy")}
    state.outcomes[200] = {"a": (False, "easy")}
    save(state, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left
    again = load(tmp_path)
    assert again.outcomes == state.outcomes
    assert again.best_step() == 100
    assert again.previous_step(200) == 100
    assert load(tmp_path / "nothing-yet").checkpoints == {}
    (tmp_path / "state.json").write_text("{broken")
    with pytest.raises(StateError, match="not valid JSON"):
        load(tmp_path)


def test_state_prune_keeps_last_k_and_best(tmp_path: Path):
    state = State()
    for i, em in enumerate([0.9, 0.1, 0.2, 0.3]):
        step = (i + 1) * 100
        state.checkpoints[step] = {"checkpoint": f"checkpoint-{step}", "status": "ok",
                                   "exact_match": em}
        state.outcomes[step] = {"a": (True, "easy")}
    state.prune(2)
    assert sorted(state.outcomes) == [100, 300, 400]
    save(state, tmp_path)
    assert json.loads((tmp_path / "state.json").read_text())["version"] == 1


def test_catalogue_section_lists_every_family():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from evaluators.families import FAMILIES, families

    class _All:
        def collect(self):
            return families({})

    registry = CollectorRegistry()
    registry.register(_All())  # type: ignore[arg-type]
    exposed = {f.name: f.type for f in text_string_to_metric_families(
        generate_latest(registry).decode())}
    documented = {row.name: (row.type_cell, row.labels) for row in section_rows("Evaluator")}
    names = {
        (n + "_total" if k == "counter" else n + "_info" if k == "info" else n): labels
        for n, (k, labels, _t) in FAMILIES.items()
    }
    assert {n: labels for n, (_t, labels) in documented.items()} == names
    assert {n + ("_total" if t == "counter" else "_info" if t == "info" else "")
            for n, t in exposed.items()} == set(documented)
