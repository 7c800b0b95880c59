"""The evaluator's figures behind the control room's views, checked against their rules.

Why from outcomes rather than a model: each figure is a rule over the per-example outcomes
(what a wrong answer is, how patterns are capped, which bin a confidence falls in); the
outcomes here are built with a seeded generator so that every rule is recomputed
independently from them and compared with what `figures.measurement` publishes. The real
evaluator publishing these families is tests/test_metrics_catalogue.py's and the dashboards'
live test's job.
"""

from __future__ import annotations

import random
from collections import Counter

from evaluators.daemon import hard_examples
from evaluators.daemon.figures import measurement
from evaluators.data import Example, Message, Suite
from evaluators.evaluate import EvalResult, RunInfo, SuiteSummary
from evaluators.families import Samples
from evaluators.outcomes import OTHER_PATTERN, ExampleOutcome, summarize
from evaluators.stats import bin_index
from tunewatch.core.config import EvaluatorConfig

SEED = 7
EXAMPLES = 300
# Patterns with clearly different frequencies, more of them than the cap below.
PATTERNS = {"syllogism": 40, "math_add": 25, "counting": 15, "logic_chain": 10, "rare": 5,
            "rarer": 5}
CAP = 3
DIFFICULTIES = ("easy", "medium", "hard")
BUCKETS = ("0-50", "50-100", "100-200", "200+")


def outcomes(seed: int = SEED) -> list[ExampleOutcome]:
    rng = random.Random(seed)
    names = list(PATTERNS)
    out = []
    for i in range(EXAMPLES):
        right = rng.random() < 0.55
        think = rng.random() < 0.3
        out.append(ExampleOutcome(
            key=f"k{i}", id=f"id{i}", origin=f"f.jsonl:{i}",
            difficulty=rng.choice(DIFFICULTIES), regime="emoji_think", source="fixed_eval",
            pattern=rng.choices(names, weights=list(PATTERNS.values()))[0],
            length_bucket=rng.choice(BUCKETS), prompt_tokens=10, golden_tokens=3,
            generated_tokens=4, golden="g", generated="<think>x</think>g" if think else "g",
            answer="g" if right else "h", exact_match=right, normalized_match=right,
            failure_mode=None if right else "wrong_content", contract_ok=None,
            think_blocks=int(think), truncated=False,
            confidence=None if i % 10 == 0 else rng.random(), nll=1.0, cross_entropy=1.0 / 3))
    return out


def result(cfg: EvaluatorConfig, outs: list[ExampleOutcome]) -> EvalResult:
    overall, breakdowns = summarize(outs, bins=cfg.calibration_bins,
                                    confidence_level=cfg.confidence_level,
                                    weights=cfg.composite_weights)
    return EvalResult(
        checkpoint="checkpoint-100", step=100,
        suite=SuiteSummary(["f.jsonl"], len(outs), len(outs), 0, [], None),
        run=RunInfo("local", 8, 8, 0, 64, "strip", 0.0, 1.0, float(len(outs))),
        overall=overall, breakdowns=breakdowns, outcomes=outs)


def published(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(labels.items())): value for labels, value in samples.get(name, [])}


def figures(cap: int = CAP) -> tuple[list[ExampleOutcome], Samples]:
    cfg = EvaluatorConfig(max_patterns=cap)
    outs = outcomes()
    return outs, measurement(result(cfg, outs), cfg, step=100, duration=1.0,
                             discovery_delay=None)


def test_pattern_x_length_keeps_the_most_frequent_patterns_and_folds_the_rest():
    outs, samples = figures()
    counts = Counter(o.pattern for o in outs)
    kept = {p for p, _n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:CAP]}
    folded = {o.pattern if o.pattern in kept else OTHER_PATTERN for o in outs}
    cells = published(samples, "tunewatch_eval_pattern_length_examples")
    rates = published(samples, "tunewatch_eval_pattern_length_exact_match_ratio")
    assert {dict(k)["pattern"] for k in cells} == folded
    assert len(folded) == CAP + 1 and OTHER_PATTERN in folded
    assert sum(cells.values()) == len(outs)
    for key, n in cells.items():
        labels = dict(key)
        members = [o for o in outs if o.length_bucket == labels["length_bucket"]
                   and (o.pattern if o.pattern in kept else OTHER_PATTERN) == labels["pattern"]]
        assert n == len(members) > 0
        assert rates[key] == sum(o.exact_match for o in members) / len(members)
    # The pattern marginal is capped the same way and agrees with the cells.
    marginal = published(samples, "tunewatch_eval_pattern_examples")
    for (label,), n in marginal.items():
        assert n == sum(v for k, v in cells.items() if dict(k)["pattern"] == label[1])


def test_a_cap_above_the_patterns_publishes_each_by_name():
    outs, samples = figures(cap=len(PATTERNS))
    cells = published(samples, "tunewatch_eval_pattern_length_examples")
    assert {dict(k)["pattern"] for k in cells} == {o.pattern for o in outs}


def test_hard_examples_are_the_rows_the_hard_example_file_gets():
    outs, samples = figures()
    hard = published(samples, "tunewatch_eval_hard_examples")
    suite = Suite([Example(o.key, o.id, (Message("user", "q"),), o.golden, o.difficulty,
                           o.regime, o.source, o.pattern, o.origin) for o in outs])
    cfg = EvaluatorConfig()
    written = hard_examples.rows(suite, result(cfg, outs), 100, "checkpoint-100")
    assert hard[(("difficulty", "all"),)] == len(written)
    for d in DIFFICULTIES:
        assert hard[(("difficulty", d),)] == sum(
            not o.exact_match for o in outs if o.difficulty == d)


def test_think_tag_rate_per_difficulty():
    outs, samples = figures()
    rates = published(samples, "tunewatch_eval_think_tag_ratio")
    for d in (*DIFFICULTIES, "all"):
        members = [o for o in outs if d in ("all", o.difficulty)]
        assert rates[(("difficulty", d),)] == sum(o.think_blocks > 0 for o in members) / len(
            members)


def test_calibration_bins_per_difficulty():
    outs, samples = figures()
    edges = EvaluatorConfig().calibration_bins
    examples = published(samples, "tunewatch_eval_difficulty_calibration_bin_examples")
    accuracy = published(samples, "tunewatch_eval_difficulty_calibration_bin_accuracy_ratio")
    assert {dict(k)["difficulty"] for k in examples} == set(DIFFICULTIES)
    for key, n in examples.items():
        labels = dict(key)
        members = [o for o in outs if o.difficulty == labels["difficulty"]
                   and o.confidence is not None
                   and f"{edges[bin_index(o.confidence, edges)]:g}-"
                       f"{edges[bin_index(o.confidence, edges) + 1]:g}" == labels["bin"]]
        assert n == len(members)
        if members:
            assert accuracy[key] == sum(o.exact_match for o in members) / len(members)
        else:
            assert key not in accuracy  # an empty bin has no accuracy, never a 0
    # Each difficulty's bins hold its examples that have a confidence; the whole-suite
    # bins keep their single `bin` label.
    with_confidence = sum(o.confidence is not None for o in outs)
    assert sum(examples.values()) == with_confidence
    whole = published(samples, "tunewatch_eval_calibration_bin_examples")
    assert sum(whole.values()) == with_confidence
    assert all(len(k) == 1 for k in whole)
