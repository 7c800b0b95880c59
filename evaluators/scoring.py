"""Judging one generated answer against its golden answer (DESIGN section 9 definitions).

Why one module: exact match, normalized match, `<think>` handling, the output contract and the
failure mode must mean the same thing in eval-once, the daemon and the benchmark. Everything
here is a pure function of texts and numbers, so it is tested without a model.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_WHITESPACE = re.compile(r"\s+")

# Failure modes, in the order they are decided (the first that applies wins).
EMPTY = "empty"
TRUNCATED = "truncated"
CONTRACT_VIOLATION = "contract_violation"
WRONG_CONTENT = "wrong_content"
FAILURE_MODES = (EMPTY, TRUNCATED, CONTRACT_VIOLATION, WRONG_CONTENT)


@dataclass(frozen=True)
class Contract:
    """What a regime's answers must look like (the seeds' emoji prefix and stop emoji)."""

    required_prefix: str = ""
    stop_marker: str = ""

    def is_empty(self) -> bool:
        return not (self.required_prefix or self.stop_marker)


@dataclass(frozen=True)
class Judgement:
    """The verdict on one answer."""

    answer: str
    exact_match: bool
    normalized_match: bool
    think_blocks: int
    contract_ok: bool | None
    failure_mode: str | None


def think_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of `<think>` blocks; an unclosed block runs to the end of the text.

    A close tag with no open tag before it (a template that opened the block in the prompt)
    makes everything up to and including it a block.
    """
    spans = [(m.start(), m.end()) for m in _THINK_BLOCK.finditer(text)]
    covered_end = spans[-1][1] if spans else 0
    rest = text[covered_end:]
    open_at = rest.find(THINK_OPEN)
    if open_at >= 0:
        spans.append((covered_end + open_at, len(text)))
    first_open = text.find(THINK_OPEN)
    first_close = text.find(THINK_CLOSE)
    if first_close >= 0 and (first_open < 0 or first_close < first_open):
        spans.insert(0, (0, first_close + len(THINK_CLOSE)))
    return spans


def strip_think(text: str) -> tuple[str, int]:
    """The text without its `<think>` blocks, and how many there were."""
    spans = think_spans(text)
    if not spans:
        return text, 0
    kept, last = [], 0
    for start, end in spans:
        kept.append(text[last:start])
        last = end
    kept.append(text[last:])
    return "".join(kept), len(spans)


def normalize(text: str, regexes: Sequence[re.Pattern[str]] = ()) -> str:
    """Normalized form: configured regexes removed, lower case, no punctuation, one space.

    The order follows lm-evaluation-harness's exact_match options (regexes_to_ignore, then
    ignore_case, then ignore_punctuation). Punctuation means ASCII punctuation and every
    Unicode P* character.
    """
    for pattern in regexes:
        text = pattern.sub("", text)
    text = text.lower()
    text = "".join(
        ch for ch in text
        if ch not in string.punctuation and not unicodedata.category(ch).startswith("P")
    )
    return _WHITESPACE.sub(" ", text).strip()


def check_contract(answer: str, contract: Contract | None) -> bool | None:
    """None when the regime has no contract; else whether the stripped answer honours it."""
    if contract is None or contract.is_empty():
        return None
    text = answer.strip()
    if contract.required_prefix and not text.startswith(contract.required_prefix):
        return False
    return not (contract.stop_marker and not text.endswith(contract.stop_marker))


def failure_mode(
    answer: str, exact: bool, truncated: bool, contract_ok: bool | None
) -> str | None:
    """Why a wrong answer is wrong: empty, truncated, contract violation or wrong content."""
    if exact:
        return None
    if not answer:
        return EMPTY
    if truncated:
        return TRUNCATED
    if contract_ok is False:
        return CONTRACT_VIOLATION
    return WRONG_CONTENT


def judge(
    generated: str,
    golden: str,
    *,
    truncated: bool,
    strip_thinking: bool = True,
    regexes: Sequence[re.Pattern[str]] = (),
    contract: Contract | None = None,
) -> Judgement:
    """Exact and normalized match, `<think>` count, contract and failure mode of one answer."""
    answer, blocks = strip_think(generated) if strip_thinking else (generated, 0)
    if not strip_thinking:
        blocks = len(think_spans(generated))
    gold = strip_think(golden)[0] if strip_thinking else golden
    answer, gold = answer.strip(), gold.strip()
    exact = answer == gold
    normalized = exact or normalize(answer, regexes) == normalize(gold, regexes)
    contract_ok = check_contract(answer, contract)
    return Judgement(
        answer=answer,
        exact_match=exact,
        normalized_match=normalized,
        think_blocks=blocks,
        contract_ok=contract_ok,
        failure_mode=failure_mode(answer, exact, truncated, contract_ok),
    )


def answer_token_mask(
    tokens: Sequence[str], strip_thinking: bool, answer_chars: int | None = None
) -> list[bool]:
    """Which generated tokens belong to the answer proper.

    Token texts are laid end to end; a token is left out when it starts inside a stripped
    `<think>` block, or at or after `answer_chars` (a removed trailing stop string). Tokens
    that are only whitespace around the answer are kept: the model chose them.
    """
    spans = think_spans("".join(tokens)) if strip_thinking else []
    limit = answer_chars if answer_chars is not None else sum(len(t) for t in tokens)
    mask, offset = [], 0
    for token in tokens:
        inside = any(start <= offset < end for start, end in spans)
        mask.append(not inside and offset < limit)
        offset += len(token)
    return mask


def answer_confidence(logprobs: Sequence[float], mask: Sequence[bool]) -> float | None:
    """Geometric mean of the answer tokens' probabilities: exp(mean log-probability).

    None when there is no answer token: a confidence over nothing is not a measurement.
    """
    chosen = [lp for lp, keep in zip(logprobs, mask, strict=True) if keep]
    if not chosen:
        return None
    return math.exp(sum(chosen) / len(chosen))
