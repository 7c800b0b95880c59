"""One evaluation of one checkpoint: load once, one pass over the suite, every figure.

Why one pass: the seeds ran eight daemons that each loaded the checkpoint and computed one
figure, and a shared broken function made all of them publish loss=inf, accuracy=0% for days.
Here one load serves generation (exact match, failure modes, confidence, calibration) and
teacher forcing (cross-entropy) batch by batch, and any failure raises EvaluationError
instead of returning a default.

Batching: examples are grouped by regime (each regime may have its own stop marker) and sorted
by prompt length, then golden answer length, so that left padding (generation) and right
padding (the golden answers scored after the prompts) waste little; outcomes come back in the
suite's order. A batch that runs out of memory is split in half and retried, down to one
example, and the smaller size is kept for the rest.

Context guard: with a backend that knows its model's context length (the local one), an
example whose prompt plus max_new_tokens (or plus its golden answer, if longer) needs more
positions than the model has is not evaluated: it is listed with the reason among the
suite's skipped lines (and counted there), never run into an index error or cut silently.

Quick mode (`evaluate_checkpoint(..., quick=True)`, `tunewatch eval-once --quick`): exact
match, failure modes, confidence and calibration, no teacher-forced pass (cross-entropy
absent, as with an inference server that only generates). The daemon never uses it.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators.backends.base import (
    BackendOutOfMemoryError,
    BoundedContext,
    Generation,
    GenerationBackend,
    GoldenScore,
)
from evaluators.data import Example, Message, SkippedLine, Suite, load_suite, quick_subset
from evaluators.errors import EvaluationError
from evaluators.outcomes import ExampleOutcome, GroupStats, length_bucket, summarize
from evaluators.scoring import Contract, answer_confidence, answer_token_mask, judge
from tunewatch.core.config import EvaluatorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteSummary:
    """Which examples were evaluated and what was left out."""

    files: list[str]
    examples: int
    available: int
    duplicates: int
    skipped: list[SkippedLine]
    limit: int | None


@dataclass(frozen=True)
class RunInfo:
    """How the evaluation ran (for the report and the daemon's gauges)."""

    backend: str
    batch_size: int
    final_batch_size: int
    oom_retries: int
    max_new_tokens: int
    think: str
    started_at: float
    duration_seconds: float
    examples_per_second: float
    quick: bool = False  # quick mode: no teacher-forced pass, cross-entropy absent


@dataclass(frozen=True)
class EvalResult:
    """The complete result of evaluating one checkpoint.

    overall and breakdowns[name][value] hold GroupStats; outcomes keep every example (key,
    correctness, failure mode, confidence, cross-entropy, token counts) for paired tests.
    """

    checkpoint: str
    step: int | None
    suite: SuiteSummary
    run: RunInfo
    overall: GroupStats
    breakdowns: dict[str, dict[str, GroupStats]]
    outcomes: list[ExampleOutcome] = field(repr=False)


@dataclass
class _Planned:
    """An example with its prompt length, ready for batching."""

    example: Example
    prompt_tokens: int


class _Pass:
    """The batch loop of one evaluation (state: current batch size, OOM retries)."""

    def __init__(self, backend: GenerationBackend, cfg: EvaluatorConfig,
                 quick: bool = False) -> None:
        self.backend = backend
        self.cfg = cfg
        self.quick = quick
        self.batch_size = cfg.batch_size
        self.oom_retries = 0
        self.regexes = [re.compile(r) for r in cfg.normalize_regexes]
        self.contracts = {
            name: Contract(c.required_prefix, c.stop_marker) for name, c in cfg.contracts.items()
        }

    def stops_for(self, regime: str) -> list[str]:
        stops = [s for s in self.cfg.stop_strings if s]
        contract = self.contracts.get(regime)
        if contract is not None and contract.stop_marker:
            stops.append(contract.stop_marker)
        return stops

    def plan(self, examples: Sequence[Example]) -> deque[_Planned]:
        """Examples in batch order (`batch_order`)."""
        return deque(batch_order(self.backend, examples))

    def next_batch(self, queue: deque[_Planned]) -> list[_Planned]:
        batch = [queue.popleft()]
        while queue and len(batch) < self.batch_size and queue[0].example.regime == (
            batch[0].example.regime
        ):
            batch.append(queue.popleft())
        return batch

    def run_batch(self, batch: list[_Planned]) -> list[ExampleOutcome]:
        """Generate and teacher-force one batch; out-of-memory propagates to `run`."""
        prompts = [p.example.prompt for p in batch]
        stops = self.stops_for(batch[0].example.regime)
        generations = self.backend.generate(prompts, self.cfg.max_new_tokens, stops)
        goldens = [p.example.golden for p in batch]
        scores = self.golden_counts(prompts, goldens) if self.quick else self.backend.score(
            prompts, goldens)
        if len(generations) != len(batch) or len(scores) != len(batch):
            raise EvaluationError("backend", "backend returned a different number of results")
        return [
            self.outcome(p, g, s) for p, g, s in zip(batch, generations, scores, strict=True)
        ]

    def golden_counts(self, prompts: Sequence[Sequence[Message]],
                      goldens: Sequence[str]) -> list[GoldenScore]:
        """Quick mode: the golden answers' token counts, no likelihood."""
        if isinstance(self.backend, BoundedContext):
            return [GoldenScore(None, self.backend.golden_tokens(g)) for g in goldens]
        return [GoldenScore(None, s.tokens) for s in self.backend.score(prompts, goldens)]

    def run(self, examples: Sequence[Example], progress: Any) -> list[ExampleOutcome]:
        queue = self.plan(examples)
        outcomes: list[ExampleOutcome] = []
        while queue:
            batch = self.next_batch(queue)
            try:
                outcomes.extend(self.run_batch(batch))
            except BackendOutOfMemoryError as exc:
                self.shrink(batch, queue, exc)
                continue
            except EvaluationError:
                raise
            except Exception as exc:  # a backend bug or a broken model: one line, then stop
                first = str(exc).strip().splitlines()
                detail = f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__
                raise EvaluationError("backend", f"evaluation failed: {detail}") from exc
            progress.update(len(batch))
        return outcomes

    def shrink(self, batch: list[_Planned], queue: deque[_Planned], exc: Exception) -> None:
        """Halve the batch size after an out-of-memory error and put the batch back."""
        if len(batch) == 1:
            raise EvaluationError(
                "out_of_memory", f"out of memory even with batch size 1: {exc}"
            ) from exc
        self.batch_size = max(1, len(batch) // 2)
        self.oom_retries += 1
        log.warning("out of memory at batch size %d, retrying at %d", len(batch),
                    self.batch_size)
        queue.extendleft(reversed(batch))

    def outcome(self, planned: _Planned, gen: Generation, score: GoldenScore) -> ExampleOutcome:
        """Judge one generated answer and attach its likelihood figures."""
        ex = planned.example
        text, removed = self._without_config_stop(gen.text)
        strip = self.cfg.think == "strip"
        verdict = judge(
            text, ex.golden, truncated=gen.truncated, strip_thinking=strip,
            regexes=self.regexes, contract=self.contracts.get(ex.regime),
        )
        measured = [*(gen.logprobs or []), *([] if score.nll is None else [score.nll])]
        if not all(math.isfinite(v) for v in measured):
            raise EvaluationError(
                "backend", f"non-finite log-probabilities for {ex.origin}: the model is broken"
            )
        if score.tokens < 1:
            raise EvaluationError("backend", f"golden answer of {ex.origin} has no tokens")
        # Offsets in the tokens' own texts (a multi-byte character split over tokens is
        # longer there than in the decoded text), so the limit is counted from their end.
        limit = sum(len(t) for t in gen.tokens) - removed if removed else None
        mask = answer_token_mask(gen.tokens, strip, limit)
        return ExampleOutcome(
            key=ex.key, id=ex.id, origin=ex.origin, difficulty=ex.difficulty,
            regime=ex.regime, source=ex.source, pattern=ex.pattern,
            length_bucket=length_bucket(planned.prompt_tokens, self.cfg.length_buckets),
            prompt_tokens=planned.prompt_tokens, golden_tokens=score.tokens,
            generated_tokens=len(gen.tokens), golden=ex.golden, generated=text,
            answer=verdict.answer, exact_match=verdict.exact_match,
            normalized_match=verdict.normalized_match, failure_mode=verdict.failure_mode,
            contract_ok=verdict.contract_ok, think_blocks=verdict.think_blocks,
            truncated=gen.truncated,
            confidence=None if gen.logprobs is None else answer_confidence(gen.logprobs, mask),
            nll=score.nll,
            cross_entropy=None if score.nll is None else score.nll / score.tokens,
        )

    def _without_config_stop(self, text: str) -> tuple[str, int]:
        """Configured stop strings end the answer and are not part of it (contract markers are).

        Returns the answer and how many characters were removed from its end.
        """
        for stop in self.cfg.stop_strings:
            if stop and text.endswith(stop):
                return text[: -len(stop)], len(stop)
        return text, 0


def batch_order(backend: GenerationBackend, examples: Sequence[Example]) -> list[_Planned]:
    """Examples grouped by regime, then sorted by prompt length and golden answer length
    (characters: the order only needs to be close), so that a batch pads little on either
    side; the content key breaks ties, so the same examples in any order form the same
    batches and get the same answers."""
    planned = [_Planned(e, backend.prompt_tokens(e.prompt)) for e in examples]
    planned.sort(key=lambda p: (p.example.regime, p.prompt_tokens, len(p.example.golden),
                                p.example.key))
    return planned


def regime_batches(backend: GenerationBackend, examples: Sequence[Example],
                   batch_size: int) -> list[list[Example]]:
    """The batches an evaluation forms at `batch_size` (no out-of-memory retry): the
    benchmarks run a plain generate loop over exactly these, so answers can be compared."""
    batches: list[list[Example]] = []
    for planned in batch_order(backend, examples):
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and last[0].regime == planned.example.regime:
            last.append(planned.example)
        else:
            batches.append([planned.example])
    return batches


def fit_context(
    backend: GenerationBackend, examples: Sequence[Example], max_new_tokens: int
) -> tuple[list[Example], list[SkippedLine]]:
    """The examples that fit the model's context, and the others as skipped lines with the
    reason (the module docstring's context guard). A backend that does not know its
    model's context length (the remote one) keeps every example."""
    if not isinstance(backend, BoundedContext) or backend.context_length is None:
        return list(examples), []
    limit = backend.context_length
    kept: list[Example] = []
    refused: list[SkippedLine] = []
    for example in examples:
        prompt = backend.prompt_tokens(example.prompt)
        golden = backend.golden_tokens(example.golden)
        needed = prompt + max(max_new_tokens, golden)
        if needed <= limit:
            kept.append(example)
            continue
        file, _, line = example.origin.rpartition(":")
        refused.append(SkippedLine(
            file or example.origin, int(line) if line.isdigit() else 0,
            f"not evaluated: prompt of {prompt} tokens + max(max_new_tokens {max_new_tokens},"
            f" golden {golden} tokens) needs {needed} positions, the model has {limit}"))
    if refused:
        log.warning("%d example(s) left out: longer than the model's context of %d positions"
                    " (first: %s)", len(refused), limit, refused[0].where())
    return kept, refused


def _progress(total: int, show: bool | None) -> Any:
    """A tqdm bar on a terminal only: logs and pipes get no carriage-return noise."""
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, unit="ex", desc="eval", disable=not enabled, leave=False)


def evaluate_examples(
    backend: GenerationBackend,
    examples: Sequence[Example],
    cfg: EvaluatorConfig,
    *,
    show_progress: bool | None = None,
    quick: bool = False,
) -> tuple[list[ExampleOutcome], RunInfo]:
    """The one pass over `examples` with an already loaded backend (`quick`: no
    teacher-forced pass, golden answers only counted)."""
    if not examples:
        raise EvaluationError("data", "nothing to evaluate: the suite is empty")
    started = time.time()
    clock = time.perf_counter()
    loop = _Pass(backend, cfg, quick)
    with _progress(len(examples), show_progress) as bar:
        outcomes = loop.run(examples, bar)
    elapsed = time.perf_counter() - clock
    order = {e.key: i for i, e in enumerate(examples)}
    outcomes.sort(key=lambda o: order[o.key])
    info = RunInfo(
        backend=backend.description, batch_size=cfg.batch_size,
        final_batch_size=loop.batch_size, oom_retries=loop.oom_retries,
        max_new_tokens=cfg.max_new_tokens, think=cfg.think, started_at=started,
        duration_seconds=elapsed, examples_per_second=len(outcomes) / elapsed, quick=quick,
    )
    return outcomes, info


def select_examples(suite: Suite, limit: int | None) -> list[Example]:
    """The whole suite, or the quick subset of `limit` examples."""
    if limit is None:
        return list(suite.examples)
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return quick_subset(suite.examples, limit)


def evaluate_with_backend(
    backend: GenerationBackend,
    suite: Suite,
    cfg: EvaluatorConfig,
    *,
    checkpoint: str,
    step: int | None,
    limit: int | None = None,
    show_progress: bool | None = None,
    quick: bool = False,
) -> EvalResult:
    """Evaluate an already loaded backend on a loaded suite (for any backend kind).

    Examples longer than the model's context are left out and listed as skipped lines
    (`fit_context`); if that leaves none, the evaluation fails (reason data).
    """
    selected = select_examples(suite, limit)
    examples, refused = fit_context(backend, selected, cfg.max_new_tokens)
    if selected and not examples:
        raise EvaluationError("data", f"none of the {len(selected)} examples fits the model's"
                              f" context: {refused[0].reason}")
    outcomes, info = evaluate_examples(backend, examples, cfg, show_progress=show_progress,
                                       quick=quick)
    overall, breakdowns = summarize(
        outcomes, bins=cfg.calibration_bins, confidence_level=cfg.confidence_level,
        weights=cfg.composite_weights,
    )
    summary = SuiteSummary(
        files=suite.files, examples=len(examples), available=len(suite.examples),
        duplicates=suite.duplicates, skipped=[*suite.skipped, *refused], limit=limit,
    )
    return EvalResult(checkpoint, step, summary, info, overall, breakdowns, outcomes)


def suite_for(cfg: EvaluatorConfig, suite: Suite | None,
              data_dir: Path | str | None) -> Suite:
    """`suite` if given, else the one read from `data_dir`, else from cfg.data."""
    if suite is not None:
        return suite
    return load_suite(Path(data_dir if data_dir is not None else cfg.data), cfg.files,
                      cfg.derive_labels)


# evaluate_checkpoint's signature, or a function standing in for it (the remote evaluator's
# evaluate): (checkpoint, cfg, *, suite, data_dir, limit, show_progress) -> EvalResult.
Evaluate = Callable[..., "EvalResult"]


def evaluate_checkpoint(
    checkpoint: Path | str,
    cfg: EvaluatorConfig,
    *,
    suite: Suite | None = None,
    data_dir: Path | str | None = None,
    limit: int | None = None,
    show_progress: bool | None = None,
    quick: bool = False,
) -> EvalResult:
    """Evaluate one checkpoint directory with the local transformers backend.

    The suite is read first (from `suite`, else `data_dir`, else cfg.data) so that a data
    problem is reported before a model is loaded; the model is loaded once and released at
    the end. Raises EvaluationError (with a bounded `reason`) when nothing can be measured.
    quick: no teacher-forced pass (cross-entropy absent; eval-once --quick only).
    """
    from evaluators.backends.local import LocalBackend

    suite = suite_for(cfg, suite, data_dir)
    backend, info = LocalBackend.load(
        checkpoint, device=cfg.device, dtype=cfg.dtype, no_chat_template=cfg.no_chat_template,
        teacher_forcing=not quick,
    )
    try:
        return evaluate_with_backend(
            backend, suite, cfg, checkpoint=str(info.path), step=info.step, limit=limit,
            show_progress=show_progress, quick=quick,
        )
    finally:
        backend.close()
