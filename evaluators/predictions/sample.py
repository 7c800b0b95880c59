"""Which examples are recorded for a checkpoint, and the rows recorded for them.

Why a seeded sample of keys: following an example across training needs the same examples
at every checkpoint, also after a daemon restart; a sample drawn with a fixed seed from the
suite's sorted example keys is the same set every time for the same suite. Failed examples
(optional) come on top, capped per checkpoint.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluators.data import Example, Message
from evaluators.outcomes import ExampleOutcome
from tunewatch.core.config import PredictionsConfig

Row = dict[str, Any]


def sample_keys(keys: Sequence[str], size: int, seed: int) -> set[str]:
    """`size` keys drawn with `seed` from the sorted distinct keys (all if fewer)."""
    ordered = sorted(set(keys))
    return set(random.Random(seed).sample(ordered, min(size, len(ordered))))


def render_prompt(messages: Sequence[Message]) -> str:
    """A readable prompt: the user's text alone for a single turn, else 'role: text' turns."""
    if len(messages) == 1:
        return messages[0].content
    return "\n\n".join(f"{m.role}: {m.content}" for m in messages)


def checkpoint_info(path: Path) -> dict[str, Any]:
    """epoch, max_steps and save_steps from trainer_state.json (empty when unreadable)."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def due(cfg: PredictionsConfig, step: int, epoch: float | None,
        last_epoch: float | None) -> bool:
    """Whether this checkpoint is recorded under `predictions.frequency`."""
    if not cfg.enabled:
        return False
    if cfg.frequency == "steps":
        return step % cfg.every_n_steps == 0
    if cfg.frequency == "epoch":
        if epoch is None or last_epoch is None:
            return True
        return math.floor(epoch) > math.floor(last_epoch)
    return True


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]


def build_rows(cfg: PredictionsConfig, *, run: str, step: int, epoch: float | None,
               checkpoint: str, outcomes: Sequence[ExampleOutcome],
               examples: Sequence[Example], sample: set[str], duration: float,
               created_at: float) -> list[Row]:
    """Rows for the sampled outcomes, plus the failed ones when configured.

    generation_seconds: the pass's duration shared out by generated tokens (batched
    generation has no per-example clock); None when nothing was generated.
    """
    by_key = {e.key: e for e in examples}
    total_tokens = sum(o.generated_tokens for o in outcomes)
    chosen: list[tuple[ExampleOutcome, bool]] = [(o, True) for o in outcomes if o.key in sample]
    if cfg.record_failed:
        failed = [o for o in outcomes if not o.exact_match and o.key not in sample]
        chosen += [(o, False) for o in failed[: cfg.max_failed]]
    rows = []
    limit = cfg.max_text_chars
    for o, sampled in chosen:
        example = by_key.get(o.key)
        prompt = render_prompt(example.prompt) if example is not None else ""
        share = duration * o.generated_tokens / total_tokens if total_tokens else None
        ce = o.cross_entropy
        if ce is not None and not math.isfinite(ce):
            ce = None
        rows.append({
            "run": run, "step": step, "epoch": epoch, "checkpoint": checkpoint,
            "example_key": o.key, "example_id": o.id, "dataset": o.origin,
            "difficulty": o.difficulty, "regime": o.regime, "source": o.source,
            "pattern": o.pattern, "sampled": sampled, "prompt": _cut(prompt, limit),
            "golden": _cut(o.golden, limit), "answer": _cut(o.answer, limit),
            "exact_match": o.exact_match, "normalized_match": o.normalized_match,
            "failure_mode": o.failure_mode, "contract_ok": o.contract_ok,
            "cross_entropy": ce, "prompt_tokens": o.prompt_tokens,
            "golden_tokens": o.golden_tokens, "generated_tokens": o.generated_tokens,
            "generation_seconds": share, "created_at": created_at,
        })
    return rows
