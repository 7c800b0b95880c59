"""The figures the evaluator daemon publishes, as samples of evaluators/families.py.

Why apart from the loop: what a figure means (the measurement of one evaluation, its
comparisons with the previous and the best checkpoint, the ranking of the last K, the
loop's own counters) is decided here once; the scheduler (evaluators/daemon/scheduler.py)
only says when to compute it. Three kinds, by where they come from:

- `measurement`: every figure of one successful evaluation, the curriculum mix included;
  kept in the state file, so a restart publishes it again without re-evaluating.
- `derived`: computed from the state (paired comparisons of the published checkpoint,
  ranking, best step, last success); recomputed after each evaluation and at start.
- `loop_samples` and `remote_samples`: live counters, taken on each scrape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evaluators.compare import Comparison, compare
from evaluators.curriculum import recommended_mix
from evaluators.daemon.hard_examples import is_hard
from evaluators.evaluate import EvalResult
from evaluators.families import MARGINALS, Samples, add, add_each
from evaluators.outcomes import (
    ExampleOutcome,
    GroupStats,
    capped_pattern,
    exact_match_counts,
    kept_patterns,
)
from evaluators.ranking import rank
from evaluators.state import State
from tunewatch.core.config import EvaluatorConfig, RegressionConfig

OVERALL = "all"  # the difficulty label of the whole suite's figures


def _group(out: Samples, difficulty: str, g: GroupStats) -> None:
    d = {"difficulty": difficulty}
    add(out, "tunewatch_eval_examples", d, g.examples)
    add(out, "tunewatch_eval_exact_match_ratio", d, g.exact_match.value)
    add(out, "tunewatch_eval_exact_match_low_ratio", d, g.exact_match.low)
    add(out, "tunewatch_eval_exact_match_high_ratio", d, g.exact_match.high)
    add(out, "tunewatch_eval_normalized_match_ratio", d, g.normalized_match.value)
    if g.contract is not None:
        add(out, "tunewatch_eval_contract_pass_ratio", d, g.contract.value)
    add(out, "tunewatch_eval_cross_entropy", d, g.cross_entropy)
    add(out, "tunewatch_eval_answer_confidence_ratio", d, g.mean_confidence)
    if g.calibration is not None:
        add(out, "tunewatch_eval_expected_calibration_error", d, g.calibration.ece)
        add(out, "tunewatch_eval_brier_score", d, g.calibration.brier)
    add(out, "tunewatch_eval_composite_score", d, g.composite_score)
    add(out, "tunewatch_eval_think_tag_ratio", d, g.with_think / g.examples)
    for mode, count in sorted(g.failure_modes.items()):
        add(out, "tunewatch_eval_failed_examples", {**d, "failure_mode": mode}, count)


def _bin_label(low: float, high: float) -> str:
    return f"{low:g}-{high:g}"


def _calibration_bins(out: Samples, g: GroupStats, difficulty: str | None) -> None:
    """The reliability diagram's bins: the whole suite's (difficulty None, label `bin`
    only) or one difficulty's (labels `difficulty`, `bin`)."""
    prefix = "tunewatch_eval_" if difficulty is None else "tunewatch_eval_difficulty_"
    extra = {} if difficulty is None else {"difficulty": difficulty}
    for b in g.calibration.bins if g.calibration is not None else []:
        labels = {**extra, "bin": _bin_label(b.low, b.high)}
        add(out, f"{prefix}calibration_bin_examples", labels, b.count)
        add(out, f"{prefix}calibration_bin_accuracy_ratio", labels, b.accuracy)
        add(out, f"{prefix}calibration_bin_confidence_ratio", labels, b.mean_confidence)


def _hard_examples(out: Samples, outcomes: list[ExampleOutcome],
                   difficulties: list[str]) -> None:
    """Per difficulty and overall: the rows hard_examples.write appends for this checkpoint
    (the same rule, is_hard), 0 where every answer was right."""
    counts = dict.fromkeys(difficulties, 0)
    for o in outcomes:
        if is_hard(o):
            counts[o.difficulty] = counts.get(o.difficulty, 0) + 1
    add(out, "tunewatch_eval_hard_examples", {"difficulty": OVERALL}, sum(counts.values()))
    add_each(out, "tunewatch_eval_hard_examples", "difficulty", counts)


def _marginals(out: Samples, result: EvalResult, max_patterns: int) -> None:
    """Exact match and examples per regime, source, length bucket and (capped) pattern, and
    per pattern x length bucket, over every evaluated example (not the predictions
    sample)."""
    kept = kept_patterns(result.outcomes, max_patterns)
    for m in MARGINALS:
        if m == "pattern":
            continue
        for value, g in result.breakdowns.get(m, {}).items():
            add(out, f"tunewatch_eval_{m}_exact_match_ratio", {m: value}, g.exact_match.value)
            add(out, f"tunewatch_eval_{m}_examples", {m: value}, g.examples)
    for (pattern,), (right, n) in exact_match_counts(
            result.outcomes, lambda o: (capped_pattern(o.pattern, kept),)).items():
        add(out, "tunewatch_eval_pattern_exact_match_ratio", {"pattern": pattern}, right / n)
        add(out, "tunewatch_eval_pattern_examples", {"pattern": pattern}, n)
    for (pattern, bucket), (right, n) in exact_match_counts(
            result.outcomes,
            lambda o: (capped_pattern(o.pattern, kept), o.length_bucket)).items():
        labels = {"pattern": pattern, "length_bucket": bucket}
        add(out, "tunewatch_eval_pattern_length_exact_match_ratio", labels, right / n)
        add(out, "tunewatch_eval_pattern_length_examples", labels, n)


def measurement(result: EvalResult, cfg: EvaluatorConfig, *, step: int, duration: float,
                discovery_delay: float | None) -> Samples:
    """Every figure of one successful evaluation of checkpoint `step`, as samples."""
    out: Samples = {}
    add(out, "tunewatch_eval_checkpoint_step", {}, step)
    _group(out, OVERALL, result.overall)
    difficulties = result.breakdowns.get("difficulty", {})
    for name, g in difficulties.items():
        _group(out, name, g)
        _calibration_bins(out, g, name)
    _calibration_bins(out, result.overall, None)
    _hard_examples(out, result.outcomes, list(difficulties))
    _marginals(out, result, cfg.max_patterns)
    mix = recommended_mix({d: g.exact_match.value for d, g in difficulties.items()},
                          cfg.curriculum_min_share)
    add_each(out, "tunewatch_eval_curriculum_mix_ratio", "difficulty", mix)
    generated = sum(o.generated_tokens for o in result.outcomes)
    add(out, "tunewatch_eval_duration_seconds", {}, duration)
    add(out, "tunewatch_eval_examples_per_second", {}, result.run.examples_per_second)
    if result.run.duration_seconds > 0:
        add(out, "tunewatch_eval_tokens_per_second", {}, generated / result.run.duration_seconds)
    add(out, "tunewatch_eval_discovery_delay_seconds", {}, discovery_delay)
    return out


def published_step(published: Samples) -> int | None:
    """The checkpoint step a published measurement describes (None: nothing published)."""
    rows = published.get("tunewatch_eval_checkpoint_step", [])
    return int(rows[0][1]) if rows else None


@dataclass
class Derived:
    """What the state says beyond one measurement: samples, and the comparisons behind them."""

    samples: Samples = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)


def derived(state: State, cfg: EvaluatorConfig, step: int | None) -> Derived:
    """Comparisons of the published checkpoint `step`, ranking, best step, freshness."""
    out = Derived()
    if step is not None and step in state.outcomes:
        baselines = (("previous", state.previous_step(step)),
                     ("best", state.best_step(below=step)))
        for name, base in baselines:
            if base is None or base not in state.outcomes:
                continue
            comp = compare(state.outcomes[step], state.outcomes[base], baseline=name,
                           baseline_step=base, rules=cfg.regression,
                           confidence_level=cfg.confidence_level)
            if comp is None:
                continue
            out.comparisons.append(comp)
            _comparison_samples(out.samples, comp, state, step)
    _ranking_samples(out.samples, state, cfg.last_k)
    _regression_rule_samples(out.samples, cfg.regression)
    return out


def _regression_rule_samples(out: Samples, rules: RegressionConfig) -> None:
    """The configured regression thresholds, always: the alert rules compare with these, so
    that tunewatch_eval_regression and EvalRegression / EvalLossRegression cannot disagree."""
    add(out, "tunewatch_eval_regression_min_drop_ratio", {}, rules.min_drop_overall)
    add(out, "tunewatch_eval_difficulty_regression_min_drop_ratio", {},
        rules.min_drop_per_difficulty)
    add(out, "tunewatch_eval_regression_max_p_value", {}, rules.max_p_value)
    add(out, "tunewatch_eval_regression_loss_rise_ratio", {}, rules.loss_rise_ratio)


def _ranking_samples(out: Samples, state: State, last_k: int) -> None:
    """The last K checkpoints ranked, the best step, when the last success finished."""
    ok = [(s, state.checkpoints[s]) for s in state.succeeded()]
    entries = [(s, e["checkpoint"], e.get("composite_score"), float(e["exact_match"]))
               for s, e in ok]
    for r in rank(entries, last_k):
        labels = {"checkpoint": r.checkpoint, "step": str(r.step)}
        add(out, "tunewatch_eval_ranking_position", labels, r.rank)
        add(out, "tunewatch_eval_ranking_composite_score", labels, r.composite_score)
        add(out, "tunewatch_eval_ranking_exact_match_ratio", labels, r.exact_match)
    add(out, "tunewatch_eval_best_checkpoint_step", {}, state.best_step())
    if ok:
        add(out, "tunewatch_eval_last_success_timestamp_seconds", {},
            max(float(e["evaluated_at"]) for _s, e in ok))


def _comparison_samples(out: Samples, comp: Comparison, state: State, step: int) -> None:
    """The paired test of checkpoint `step` against one baseline (label `baseline`)."""
    b = {"baseline": comp.baseline}
    p = comp.overall
    add(out, "tunewatch_eval_regression_p_value", b, p.p_value)
    add(out, "tunewatch_eval_regression", b, float(comp.regression))
    add(out, "tunewatch_eval_baseline_step", b, comp.baseline_step)
    add(out, "tunewatch_eval_paired_examples", b, p.examples)
    add(out, "tunewatch_eval_paired_fixed_examples", b, p.fixed)
    add(out, "tunewatch_eval_paired_broken_examples", b, p.broken)
    add(out, "tunewatch_eval_exact_match_difference_ratio", b, p.difference)
    add(out, "tunewatch_eval_exact_match_difference_low_ratio", b, p.difference_low)
    add(out, "tunewatch_eval_exact_match_difference_high_ratio", b, p.difference_high)
    for difficulty, dp in comp.per_difficulty.items():
        d = {**b, "difficulty": difficulty}
        add(out, "tunewatch_eval_difficulty_regression_p_value", d, dp.p_value)
        add(out, "tunewatch_eval_difficulty_exact_match_difference_ratio", d, dp.difference)
    now_ce = state.checkpoints[step].get("cross_entropy")
    base_ce = state.checkpoints[comp.baseline_step].get("cross_entropy")
    if now_ce is not None and base_ce:
        add(out, "tunewatch_eval_cross_entropy_change_ratio", b,
            float(now_ce) / float(base_ce) - 1.0)


@dataclass(frozen=True)
class LoopCounts:
    """The scheduler's own figures at one scrape (taken under its lock)."""

    run: str
    failures: Mapping[str, int]
    scans: Mapping[str, int]
    evaluations: int
    examples_evaluated: int
    backlog: int
    newest_step: int | None
    last_evaluated_step: int | None


def loop_samples(out: Samples, counts: LoopCounts) -> None:
    """Failures and scans by reason, evaluations and examples, backlog, newest step, lag, run."""
    add_each(out, "tunewatch_eval_failures", "reason", counts.failures)
    add(out, "tunewatch_eval_evaluations", {}, counts.evaluations)
    add(out, "tunewatch_eval_examples_evaluated", {}, counts.examples_evaluated)
    add_each(out, "tunewatch_eval_scans", "reason", counts.scans)
    add(out, "tunewatch_eval_backlog_checkpoints", {}, counts.backlog)
    add(out, "tunewatch_eval_run", {"run": counts.run}, 1.0)
    if counts.newest_step is None:
        return
    add(out, "tunewatch_eval_newest_checkpoint_step", {}, counts.newest_step)
    if counts.last_evaluated_step is not None:
        add(out, "tunewatch_eval_lag_steps", {},
            max(0, counts.newest_step - counts.last_evaluated_step))


def remote_samples(out: Samples, stats: dict[str, Any] | None) -> None:
    """The inference client's counters (backend remote or deploy_best; RemoteStats)."""
    if stats is None:
        return
    add(out, "tunewatch_eval_remote_jobs", {}, stats["jobs"])
    add(out, "tunewatch_eval_remote_job_wait_seconds", {}, stats["job_seconds"])
    add_each(out, "tunewatch_eval_remote_request_retries", "reason", stats["retries"])
    add_each(out, "tunewatch_eval_remote_job_failures", "reason", stats["job_failures"])
