"""The generation interface: what the evaluation needs from a model, whatever runs it.

Why an interface: the evaluation logic (batching, scoring, statistics) must not care whether
the model runs in this process (local.py) or behind an HTTP server (remote.py). So the
interface is small and speaks in chat messages and texts, never in tensors:

- `prompt_tokens(prompt)`: the prompt's length in tokens, chat template applied (for sorting
  batches and for the length buckets);
- `generate(prompts, max_new_tokens, stops)`: greedy answers, each with its generated tokens,
  their log-probabilities under the model, and whether it was cut off by max_new_tokens;
- `score(prompts, goldens)`: the teacher-forced negative log-likelihood of each golden
  answer after its prompt (for cross-entropy); None where the backend cannot compute it
  (remote.py: a server that only generates), so that the figure is absent.

A backend that knows its model's context length (local.py) also satisfies `BoundedContext`:
`context_length` and `golden_tokens(golden)`, so that the evaluation can leave out, with a
reason, the examples that would run past the model's positions.

A backend raises `BackendOutOfMemoryError` when a batch does not fit, so that the caller can halve
the batch and retry, and `EvaluationError` for anything that ends the evaluation. `stop_cut`
and `first_line` are shared so that every backend ends answers and words errors alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from evaluators.data import Message


class BackendOutOfMemoryError(Exception):
    """A batch did not fit in (GPU or host) memory; a smaller one may."""


@dataclass(frozen=True)
class Generation:
    """One generated answer.

    text: the decoded answer without the end-of-sequence token; when a stop string ended it,
    the text ends right after that stop string (which is kept). tokens / logprobs: the
    generated tokens up to that point (each token's text, and its log-probability in nats
    under the model's unprocessed distribution; None when the backend has none, which leaves
    confidence and calibration absent). truncated: max_new_tokens ran out first.
    """

    text: str
    tokens: list[str]
    logprobs: list[float] | None
    truncated: bool


@dataclass(frozen=True)
class GoldenScore:
    """Teacher-forced likelihood of a golden answer: summed NLL (nats) over its tokens.

    nll is None when the backend cannot teacher-force (an inference server that only
    generates): cross-entropy is then absent, never estimated.
    """

    nll: float | None
    tokens: int


class GenerationBackend(Protocol):
    """What the evaluation needs from a model (see the module docstring)."""

    description: str

    def prompt_tokens(self, prompt: Sequence[Message]) -> int: ...

    def generate(
        self, prompts: Sequence[Sequence[Message]], max_new_tokens: int, stops: Sequence[str]
    ) -> list[Generation]: ...

    def score(
        self, prompts: Sequence[Sequence[Message]], goldens: Sequence[str]
    ) -> list[GoldenScore]: ...

    def close(self) -> None: ...


@runtime_checkable
class BoundedContext(Protocol):
    """A backend whose model has a known number of positions (None: unknown, unbounded).

    An example fits when its prompt tokens plus max(max_new_tokens, its golden tokens) are
    at most `context_length` (evaluate.fit_context).
    """

    context_length: int | None

    def golden_tokens(self, golden: str) -> int: ...


def stop_cut(text: str, stops: Sequence[str]) -> int | None:
    """Where the answer ends: just after the earliest stop string in it, None without one."""
    ends = [text.find(s) + len(s) for s in stops if s and s in text]
    return min(ends) if ends else None


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`: the one line an evaluation failure shows."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
