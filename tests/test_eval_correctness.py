"""The evaluation core against independent reference computations on the real tiny model.

The seeds' evaluators published loss=inf, accuracy=0% for days; these tests make that kind
of silent wrongness fail: answers are checked against a plain one-at-a-time generate loop,
cross-entropy against torch's cross_entropy, confidence against generate's own logits.

Every assertion is a rule that holds whatever the trained model answers (DESIGN section 8):
which answers a few hundred CPU steps get right differs between processors and library
versions, so no test here counts right or wrong answers of the trained model. Where two
evaluations are compared answer for answer, they batch the examples identically (the same
suite, batch size and prompts), so they run the same computation; where they batch
differently, an answer may differ only where greedy decoding faced a near-tie.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evaluators.backends.base import BackendOutOfMemoryError
from evaluators.backends.local import LocalBackend
from evaluators.data import load_suite
from evaluators.errors import EvaluationError
from evaluators.evaluate import EvalResult, evaluate_checkpoint, evaluate_with_backend
from tunewatch.core.config import ContractConfig, EvaluatorConfig

pytestmark = pytest.mark.slow

# A logit gap between greedy decoding's first and second choice below this is a near-tie:
# far above float32 rounding at this model's size (about 1e-5), which is all that padding a
# prompt differently changes, and far below any gap a model's answer rests on.
NEAR_TIE_LOGITS = 1e-3
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def cfg(**changes: object) -> EvaluatorConfig:
    return dataclasses.replace(EvaluatorConfig(), device="cpu", **changes)


@pytest.fixture(scope="module")
def checkpoint(tiny_run) -> Path:
    return tiny_run.checkpoints[-1]


@pytest.fixture(scope="module")
def result(tiny_run, checkpoint):
    return evaluate_checkpoint(checkpoint, cfg(), data_dir=tiny_run.data_dir)


@pytest.fixture(scope="module")
def single(tiny_run, checkpoint):
    """The same evaluation one example per batch: no padding, as the naive loop runs."""
    return evaluate_checkpoint(checkpoint, cfg(batch_size=1), data_dir=tiny_run.data_dir)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return load_reference(checkpoint)


def load_reference(checkpoint: Path):
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return tok, model


def prompt_ids(tok, example) -> list[int]:
    messages = [{"role": m.role, "content": m.content} for m in example.prompt]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


class NaiveAnswer(NamedTuple):
    """One example's answer from one plain generate call."""

    text: str  # up to the end marker, special tokens kept (as the evaluator decodes)
    logprobs: list[float]  # of the answer's tokens, under the raw logits
    ended: bool  # the end marker came within max_new_tokens
    smallest_gap: float  # the smallest first-minus-second logit gap along the answer


def naive_answer(tok, model, example, max_new_tokens: int) -> NaiveAnswer:
    """One example, one generate call (the seeds' way), with the chosen tokens' log-probs."""
    ids = torch.tensor([prompt_ids(tok, example)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, output_logits=True,
                             return_dict_in_generate=True)
    new = out.sequences[0, ids.shape[1]:].tolist()
    logprobs = [torch.log_softmax(step[0], -1)[tok_id].item()
                for step, tok_id in zip(out.logits, new, strict=False)]
    gaps = [float(top[0] - top[1]) for top in
            (torch.topk(step[0], 2).values for step in out.logits)]
    ended = tok.eos_token_id in new
    if ended:
        cut = new.index(tok.eos_token_id)
        new, logprobs = new[:cut], logprobs[:cut]
    return NaiveAnswer(tok.decode(new, skip_special_tokens=False), logprobs, ended, min(gaps))


@pytest.fixture(scope="module")
def naive(tiny_run, reference) -> dict[str, NaiveAnswer]:
    tok, model = reference
    budget = cfg().max_new_tokens
    return {e.key: naive_answer(tok, model, e, budget)
            for e in load_suite(tiny_run.data_dir).examples}


def reference_exact_match(text: str, golden: str) -> bool:
    """DESIGN section 9's exact match, written out again: think blocks out, then stripped."""
    return _THINK.sub("", text).strip() == _THINK.sub("", golden).strip()


def by_key(result: EvalResult) -> dict:
    return {o.key: o for o in result.outcomes}


def test_one_example_per_batch_equals_the_naive_loop(tiny_run, single, naive):
    suite = load_suite(tiny_run.data_dir)
    assert single.overall.examples == len(naive) == len(suite.examples) == 150
    goldens = {e.key: e.golden for e in suite.examples}
    for o in single.outcomes:
        plain = naive[o.key]
        assert o.generated == plain.text, o.origin
        assert o.truncated == (not plain.ended), o.origin
        assert o.exact_match == reference_exact_match(plain.text, goldens[o.key]), o.origin
    assert single.overall.exact_match.successes == sum(
        reference_exact_match(naive[k].text, g) for k, g in goldens.items())


def test_batching_changes_an_answer_only_at_a_near_tie(result, single, naive):
    """Left padding changes the arithmetic by float rounding only: a batched answer may
    differ from the unpadded one only where greedy decoding's top two logits were that close
    (and the first differing token is on the unpadded answer's path)."""
    alone = by_key(single)
    for o in result.outcomes:
        other = alone[o.key]
        if o.generated != other.generated:
            assert naive[o.key].smallest_gap < NEAR_TIE_LOGITS, (o.origin, o.generated,
                                                                 other.generated)
        else:
            assert (o.exact_match, o.truncated) == (other.exact_match, other.truncated)
            assert o.confidence == pytest.approx(other.confidence, abs=1e-4)
    assert result.overall.exact_match.successes == sum(o.exact_match for o in result.outcomes)


def test_cross_entropy_equals_torch_cross_entropy(tiny_run, result, reference):
    tok, model = reference
    by_key = {o.key: o for o in result.outcomes}
    total_nll, total_tokens = 0.0, 0
    for example in load_suite(tiny_run.data_dir).examples:
        prompt = prompt_ids(tok, example)
        golden = tok(example.golden, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + golden])).logits[0]
        ce = torch.nn.functional.cross_entropy(
            logits[len(prompt) - 1 : -1], torch.tensor(golden)).item()
        outcome = by_key[example.key]
        assert outcome.golden_tokens == len(golden)
        assert outcome.cross_entropy == pytest.approx(ce, abs=1e-4)
        total_nll += ce * len(golden)
        total_tokens += len(golden)
    assert result.overall.cross_entropy == pytest.approx(total_nll / total_tokens, abs=1e-4)
    assert math.isfinite(result.overall.cross_entropy) and result.overall.cross_entropy > 0


def test_confidence_comes_from_the_generation_logits(single, naive):
    for outcome in single.outcomes:
        plain = naive[outcome.key]
        assert outcome.generated == plain.text
        if not plain.logprobs:  # no answer token: no confidence, never a default
            assert outcome.confidence is None
            continue
        expected = math.exp(sum(plain.logprobs) / len(plain.logprobs))
        assert outcome.confidence == pytest.approx(expected, abs=1e-4)


def test_figures_per_difficulty_add_up(result):
    groups = result.breakdowns["difficulty"]
    assert sorted(groups) == ["easy", "hard", "medium"]
    assert sum(g.examples for g in groups.values()) == 150
    assert sum(g.exact_match.successes for g in groups.values()) == (
        result.overall.exact_match.successes)
    for name, group in groups.items():
        members = [o for o in result.outcomes if o.difficulty == name]
        assert group.examples == len(members)
        assert group.exact_match.successes == sum(o.exact_match for o in members)
        assert group.exact_match.value == group.exact_match.successes / len(members)
    for name in ("regime", "source", "pattern", "length_bucket", "pattern_length"):
        assert sum(g.examples for g in result.breakdowns[name].values()) == 150
    cal = result.overall.calibration
    # An answer without tokens (the model ended at once: failure mode empty) has no
    # confidence; every other answer has one, and the bins hold exactly those.
    confident = [o for o in result.outcomes if o.confidence is not None]
    assert all(o.answer == "" for o in result.outcomes if o.confidence is None)
    assert all((o.confidence is None) == (o.generated_tokens == 0) for o in result.outcomes)
    assert cal is not None and sum(b.count for b in cal.bins) == cal.count == len(confident)
    failures = sum(result.overall.failure_modes.values())
    assert failures == 150 - result.overall.exact_match.successes


def test_outcomes_keep_what_paired_tests_need(result):
    outcome = result.outcomes[0]
    assert outcome.origin == "easy_50.jsonl:1" and outcome.id == "easy-000"
    assert len({o.key for o in result.outcomes}) == 150
    for o in result.outcomes:
        assert o.prompt_tokens > 0 and o.golden_tokens > 0
        assert (o.failure_mode is None) == o.exact_match
        assert o.confidence is None or 0.0 < o.confidence <= 1.0


def reference_cross_entropy(tok, model, examples) -> dict[str, float]:
    """Per example: torch's cross_entropy of the golden tokens after the prompt."""
    found = {}
    for example in examples:
        prompt = prompt_ids(tok, example)
        golden = tok(example.golden, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + golden])).logits[0]
        found[example.key] = torch.nn.functional.cross_entropy(
            logits[len(prompt) - 1 : -1], torch.tensor(golden)).item()
    return found


def test_each_checkpoint_is_scored_with_its_own_weights(tiny_run, result):
    first_dir = tiny_run.checkpoints[0]
    first = evaluate_checkpoint(first_dir, cfg(), data_dir=tiny_run.data_dir)
    assert first.step == 100 and result.step == 300
    expected = reference_cross_entropy(*load_reference(first_dir),
                                       load_suite(tiny_run.data_dir).examples)
    for o in first.outcomes:
        assert o.cross_entropy == pytest.approx(expected[o.key], abs=1e-4)
    # Different weights, different likelihoods: the figures are not another checkpoint's.
    assert [o.nll for o in first.outcomes] != [o.nll for o in result.outcomes]


def test_max_new_tokens_truncates(tiny_run, checkpoint, result):
    short = evaluate_checkpoint(checkpoint, cfg(max_new_tokens=1), data_dir=tiny_run.data_dir)
    full = by_key(result)
    for o in short.outcomes:
        # The same batches: the first token is the full answer's first token, and an answer
        # that had one (it did not end at once) has run out of its budget of one.
        whole = full[o.key]
        assert o.generated_tokens == min(1, whole.generated_tokens), o.origin
        assert o.truncated == (whole.generated_tokens > 0), o.origin
    hard = [o for o in short.outcomes if o.difficulty == "hard"]
    assert len(hard) == 50
    for o in hard:
        # Digits are single tokens (the tokenizer splits them) and a hard answer has two or
        # more: one token is never right, and a wrong answer is empty or truncated.
        assert o.golden_tokens >= 2 and not o.exact_match
        assert o.failure_mode == ("empty" if o.answer == "" else "truncated"), o.origin
    assert short.breakdowns["difficulty"]["hard"].failure_modes["truncated"] == sum(
        o.failure_mode == "truncated" for o in hard)


def test_stop_strings_end_the_answer(tiny_run, checkpoint, result):
    # The stop string is the first character of a real answer (a digit where one starts
    # so), so at least that answer ends before it has any text, whatever the model answers.
    starts = [o.generated[0] for o in result.outcomes if o.generated]
    stop = next((c for c in starts if c.isdigit()), starts[0])
    stopped = evaluate_checkpoint(checkpoint, cfg(stop_strings=[stop]),
                                  data_dir=tiny_run.data_dir)
    full = by_key(result)
    for o in stopped.outcomes:
        # The same batches: each answer is the full one cut before the stop string's first
        # occurrence (which is removed), and only an answer without one can run out.
        whole = full[o.key]
        assert o.generated == whole.generated.split(stop, 1)[0], o.origin
        assert o.truncated == (whole.truncated and stop not in whole.generated), o.origin
        assert stop not in o.answer
        assert o.generated == "" or o.confidence is not None, o.origin
        if stop.isdigit():
            # A digit is a token of its own (the tokenizer splits digits), and a removed
            # stop string is not an answer token: the stop alone leaves no confidence.
            assert (o.confidence is None) == (o.generated == ""), o.origin
    empty = [o for o in stopped.outcomes if o.answer == ""]
    assert empty, f"the answer that starts with {stop!r} is empty once {stop!r} stops it"
    assert stopped.overall.failure_modes["empty"] == len(empty)


def test_contracts_are_checked_per_regime(tiny_run, checkpoint, result):
    contracts = {"plain_sft": ContractConfig(required_prefix="#")}
    checked = evaluate_checkpoint(checkpoint, cfg(contracts=contracts), data_dir=tiny_run.data_dir)
    full = by_key(result)
    expected_modes = dict.fromkeys(("empty", "truncated", "contract_violation",
                                    "wrong_content"), 0)
    for o in checked.outcomes:
        # A contract without a stop marker changes the judgement, not the generation.
        assert (o.generated, o.exact_match) == (full[o.key].generated, full[o.key].exact_match)
        assert o.contract_ok == o.answer.startswith("#")
        # The precedence of FAILURE_MODES: empty, truncated, then the contract, then content.
        mode = (None if o.exact_match else "empty" if not o.answer
                else "truncated" if o.truncated
                else "contract_violation" if not o.contract_ok else "wrong_content")
        assert o.failure_mode == mode, o.origin
        if mode is not None:
            expected_modes[mode] += 1
    contract = checked.overall.contract
    assert contract is not None and contract.total == 150
    assert contract.successes == sum(o.contract_ok for o in checked.outcomes)
    assert {m: checked.overall.failure_modes[m] for m in expected_modes} == expected_modes
    wrong = 150 - checked.overall.exact_match.successes
    assert sum(expected_modes.values()) == wrong


def test_think_blocks_in_the_golden_answer(tiny_run, checkpoint, tmp_path, result):
    # Every file rewritten, none left out: the same prompts batch as in `result`.
    for path in sorted(tiny_run.data_dir.glob("*.jsonl")):
        with (tmp_path / path.name).open("w") as fh:
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                content = rec["messages"][1]["content"]
                rec["messages"][1]["content"] = "<think>add</think>" + content
                fh.write(json.dumps(rec) + "\n")
    stripped = evaluate_checkpoint(checkpoint, cfg(), data_dir=tmp_path)
    kept = evaluate_checkpoint(checkpoint, cfg(think="keep"), data_dir=tmp_path)
    plain = {o.id: o for o in result.outcomes}
    for s, k in zip(stripped.outcomes, kept.outcomes, strict=True):
        assert s.id == k.id and s.generated == k.generated == plain[s.id].generated
        # strip: the golden's block goes, so the verdict is the plain golden's.
        assert s.exact_match == plain[s.id].exact_match
        # keep: the block is part of the golden, so only an answer holding it can match.
        assert k.exact_match == (k.answer == k.golden.strip())
        assert k.golden.startswith("<think>add</think>")
    assert stripped.overall.exact_match.successes == result.overall.exact_match.successes


class OutOfMemoryAbove(LocalBackend):
    """Fault injection: the real backend, failing batches larger than `limit` like an OOM."""

    limit = 8

    def generate(self, prompts, max_new_tokens, stops):
        if len(prompts) > self.limit:
            raise BackendOutOfMemoryError(f"injected: batch of {len(prompts)}")
        return super().generate(prompts, max_new_tokens, stops)


def failing_backend(checkpoint: Path, limit: int) -> tuple[OutOfMemoryAbove, int | None]:
    loaded, info = LocalBackend.load(checkpoint, device="cpu")
    backend = OutOfMemoryAbove(loaded.model, loaded.tokenizer, "cpu", loaded.plain_prompts)
    backend.limit = limit
    return backend, info.step


def test_out_of_memory_halves_the_batch_and_retries(tiny_run, checkpoint):
    backend, step = failing_backend(checkpoint, 8)
    retried = evaluate_with_backend(backend, load_suite(tiny_run.data_dir), cfg(),
                                    checkpoint=str(checkpoint), step=step)
    assert retried.run.final_batch_size == 8 and retried.run.oom_retries == 2
    # The failed batches were put back whole, so the batches that ran are those of batch
    # size 8 from the start: the same computation, the same answers.
    eight = evaluate_checkpoint(checkpoint, cfg(batch_size=8), data_dir=tiny_run.data_dir)
    assert [(o.key, o.generated, o.exact_match) for o in retried.outcomes] == [
        (o.key, o.generated, o.exact_match) for o in eight.outcomes]


def test_out_of_memory_at_batch_size_one_is_fatal(tiny_run, checkpoint):
    backend, step = failing_backend(checkpoint, 0)
    with pytest.raises(EvaluationError) as failure:
        evaluate_with_backend(backend, load_suite(tiny_run.data_dir), cfg(batch_size=4),
                              checkpoint=str(checkpoint), step=step)
    assert failure.value.reason == "out_of_memory"


def without_chat_template(checkpoint: Path, target: Path) -> Path:
    shutil.copytree(checkpoint, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    return target


def test_no_chat_template_is_an_error_by_default(tiny_run, checkpoint, tmp_path):
    bare = without_chat_template(checkpoint, tmp_path / "checkpoint-300")
    with pytest.raises(EvaluationError, match="no chat template") as failure:
        evaluate_checkpoint(bare, cfg(), data_dir=tiny_run.data_dir)
    assert failure.value.reason == "chat_template"


def test_no_chat_template_plain_fallback(tiny_run, checkpoint, tmp_path):
    bare = without_chat_template(checkpoint, tmp_path / "checkpoint-300")
    plain = evaluate_checkpoint(bare, cfg(no_chat_template="plain", max_new_tokens=4),
                                data_dir=tiny_run.data_dir, limit=9)
    backend, _info = LocalBackend.load(bare, device="cpu", no_chat_template="plain")
    example = load_suite(tiny_run.data_dir).examples[0]
    assert backend.render(example.prompt) == example.prompt[0].content + "\n"
    assert plain.overall.examples == 9 and math.isfinite(plain.overall.cross_entropy)
