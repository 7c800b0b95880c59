"""Judging answers: exact/normalized match, <think> handling, contracts, failure modes."""

from __future__ import annotations

import math
import re

import pytest

from evaluators.outcomes import length_bucket
from evaluators.scoring import (
    Contract,
    answer_confidence,
    answer_token_mask,
    check_contract,
    judge,
    normalize,
    strip_think,
)


@pytest.mark.parametrize(
    ("text", "stripped", "blocks"),
    [
        ("7", "7", 0),
        ("<think>3+4</think>7", "7", 1),
        ("<think>a</think>x<think>b</think>y", "xy", 2),
        ("<think>never closed", "", 1),
        ("opened in the prompt</think>\n7", "\n7", 1),
    ],
)
def test_strip_think(text, stripped, blocks):
    assert strip_think(text) == (stripped, blocks)


def test_normalize_case_whitespace_punctuation_and_regexes():
    assert normalize("  The  Answer:\n 42! ") == "the answer 42"
    assert normalize("Socrates is mortal.") == normalize("socrates IS mortal")
    assert normalize("\u00abQuote\u00bb") == "quote"
    assert normalize("Answer: 42", [re.compile(r"^Answer:\s*")]) == "42"


def test_exact_match_strips_whitespace_and_think_only():
    verdict = judge(" <think>hmm</think> 7\n", "7", truncated=False)
    assert verdict.exact_match and verdict.think_blocks == 1 and verdict.failure_mode is None
    assert not judge("7.", "7", truncated=False).exact_match
    assert judge("7.", "7", truncated=False).normalized_match


def test_think_keep_mode_compares_the_raw_text():
    verdict = judge("<think>x</think>7", "7", truncated=False, strip_thinking=False)
    assert not verdict.exact_match and verdict.think_blocks == 1


@pytest.mark.parametrize(
    ("generated", "truncated", "contract", "mode"),
    [
        ("7", False, None, None),
        ("", False, None, "empty"),
        ("<think>only thinking</think>", False, None, "empty"),
        ("1234567", True, None, "truncated"),
        ("8", False, Contract(required_prefix="#"), "contract_violation"),
        ("#8", False, Contract(required_prefix="#"), "wrong_content"),
        ("8", False, None, "wrong_content"),
    ],
)
def test_failure_modes(generated, truncated, contract, mode):
    assert judge(generated, "7", truncated=truncated, contract=contract).failure_mode == mode


def test_contract_prefix_and_stop_marker():
    contract = Contract(required_prefix="\U0001f914", stop_marker="\u2705")
    assert check_contract("\U0001f914 7 \u2705", contract) is True
    assert check_contract("7 \u2705", contract) is False
    assert check_contract("\U0001f914 7", contract) is False
    assert check_contract("7", None) is None
    assert check_contract("7", Contract()) is None


def test_confidence_is_the_geometric_mean_of_answer_tokens():
    tokens = ["<think>", "x", "</think>", "4", "2"]
    logprobs = [math.log(0.1), math.log(0.2), math.log(0.3), math.log(0.5), math.log(0.8)]
    mask = answer_token_mask(tokens, strip_thinking=True)
    assert mask == [False, False, False, True, True]
    assert answer_confidence(logprobs, mask) == pytest.approx(math.sqrt(0.5 * 0.8))
    keep_all = answer_token_mask(tokens, strip_thinking=False)
    assert answer_confidence(logprobs, keep_all) == pytest.approx(
        (0.1 * 0.2 * 0.3 * 0.5 * 0.8) ** (1 / 5)
    )


def test_confidence_leaves_out_a_removed_stop_string():
    mask = answer_token_mask(["4", "2", "##"], strip_thinking=True, answer_chars=2)
    assert mask == [True, True, False]


def test_no_answer_tokens_means_no_confidence():
    assert answer_confidence([], []) is None
    assert answer_confidence([-1.0], [False]) is None


@pytest.mark.parametrize(
    ("tokens", "bucket"), [(0, "0-50"), (49, "0-50"), (50, "50-100"), (199, "100-200"),
                           (200, "200+"), (5000, "200+")],
)
def test_length_buckets(tokens, bucket):
    assert length_bucket(tokens, [0, 50, 100, 200]) == bucket
