"""Rendering an EvalResult: a readable text report, or the same content as JSON.

Why both from one result object: the text is for a person at a terminal, the JSON for scripts
and the daemon's tests, and they must never disagree. Absent figures (no contract configured,
no confidence) are printed as `-`, never as 0.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

from evaluators.evaluate import EvalResult
from evaluators.outcomes import BREAKDOWNS, GroupStats
from evaluators.stats import Calibration, Rate

_ROW = "  {:<22} {:>5}  {:<22} {:<22} {:>7} {:>6} {:>6}  {}"


def to_json(result: EvalResult) -> str:
    """The whole result (figures, breakdowns and per-example outcomes) as JSON."""
    return json.dumps(dataclasses.asdict(result), indent=2, sort_keys=False, allow_nan=False)


def _pct(rate: Rate | None) -> str:
    if rate is None:
        return "-"
    return f"{100 * rate.value:5.1f}% [{100 * rate.low:4.1f}, {100 * rate.high:4.1f}]"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _failures(stats: GroupStats) -> str:
    modes = [f"{name} {count}" for name, count in stats.failure_modes.items() if count]
    return ", ".join(modes) if modes else "none"


def _row(label: str, stats: GroupStats) -> str:
    cal = stats.calibration
    return _ROW.format(
        label[:22], stats.examples, _pct(stats.exact_match), _pct(stats.normalized_match),
        _num(stats.cross_entropy), _num(cal.ece if cal else None), _num(stats.mean_confidence, 2),
        _pct(stats.contract),
    )


def _table(title: str, groups: dict[str, GroupStats]) -> Iterable[str]:
    yield ""
    yield f"by {title}"
    yield _ROW.format("value", "n", "exact match", "normalized", "CE", "ECE", "conf",
                      "contract")
    for value, stats in groups.items():
        yield _row(value, stats)


def _calibration(cal: Calibration | None) -> Iterable[str]:
    yield ""
    if cal is None:
        yield "calibration: no example has an answer confidence"
        return
    yield f"calibration (overall): ECE {cal.ece:.4f}  Brier {cal.brier:.4f}  over {cal.count}"
    yield "  {:<12} {:>5}  {:>9}  {:>10}".format("bin", "n", "accuracy", "mean conf")
    for b in cal.bins:
        acc = "-" if b.accuracy is None else f"{100 * b.accuracy:.1f}%"
        yield f"  {b.low:.2f}-{b.high:.2f}    {b.count:>5}  {acc:>9}  {_num(b.mean_confidence):>10}"


def _header(result: EvalResult) -> Iterable[str]:
    run, suite = result.run, result.suite
    step = "unknown step" if result.step is None else f"step {result.step}"
    yield f"checkpoint   {result.checkpoint} ({step})"
    yield (f"backend      {run.backend}; batch size {run.batch_size}"
           f" (final {run.final_batch_size}, {run.oom_retries} OOM retries);"
           f" max_new_tokens {run.max_new_tokens}; think {run.think}")
    subset = "" if suite.limit is None else f" (quick subset of {suite.available})"
    yield (f"suite        {suite.examples} examples{subset} from {', '.join(suite.files)};"
           f" {suite.duplicates} duplicates counted once; {len(suite.skipped)} lines skipped")
    yield (f"time         {run.duration_seconds:.2f} s,"
           f" {run.examples_per_second:.1f} examples/s")


def _overall(stats: GroupStats) -> Iterable[str]:
    cal = stats.calibration
    yield ""
    yield f"exact match       {_pct(stats.exact_match)}  ({stats.exact_match.successes}"\
          f"/{stats.examples})"
    yield f"normalized match  {_pct(stats.normalized_match)}"
    yield (f"cross-entropy      {_num(stats.cross_entropy, 4)} nats/token over"
           f" {stats.golden_tokens} golden tokens" if stats.cross_entropy is not None else
           "cross-entropy      - (not computed: quick mode, or the remote backend)")
    yield f"confidence         mean {_num(stats.mean_confidence)}; ECE"\
          f" {_num(cal.ece if cal else None, 4)}; Brier {_num(cal.brier if cal else None, 4)}"
    yield f"contract pass     {_pct(stats.contract)}"
    yield f"failure modes      {_failures(stats)}"
    yield f"think blocks       {stats.with_think} answers had one; truncated {stats.truncated}"
    yield f"composite score    {_num(stats.composite_score)}"


def _skipped(result: EvalResult) -> Iterable[str]:
    if not result.suite.skipped:
        return
    yield ""
    yield "skipped lines"
    for item in result.suite.skipped:
        yield f"  {item.where()}: {item.reason}"


def to_text(result: EvalResult) -> str:
    """The human-readable report."""
    lines: list[str] = [*_header(result), *_overall(result.overall)]
    for name in BREAKDOWNS:
        lines.extend(_table(name.replace("_", " "), result.breakdowns[name]))
    lines.extend(_calibration(result.overall.calibration))
    lines.extend(_skipped(result))
    return "\n".join(lines) + "\n"

