"""The evaluation core against independent reference computations on the real tiny model.

The seeds' evaluators published loss=inf, accuracy=0% for days; these tests make that kind
of silent wrongness fail: exact match is checked against the plain one-at-a-time loop,
cross-entropy against torch's cross_entropy, confidence against generate's own logits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evaluators.backend import BackendOutOfMemoryError, LocalBackend
from evaluators.data import load_suite
from evaluators.errors import EvaluationError
from evaluators.evaluate import evaluate_checkpoint, evaluate_with_backend
from tunewatch.config import ContractConfig, EvaluatorConfig

pytestmark = pytest.mark.slow


def cfg(**changes: object) -> EvaluatorConfig:
    return dataclasses.replace(EvaluatorConfig(), device="cpu", **changes)


@pytest.fixture(scope="module")
def checkpoint(tiny_run) -> Path:
    return tiny_run.checkpoints[-1]


@pytest.fixture(scope="module")
def result(tiny_run, checkpoint):
    return evaluate_checkpoint(checkpoint, cfg(), data_dir=tiny_run.data_dir)


@pytest.fixture(scope="module")
def reference(checkpoint):
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return tok, model


def prompt_ids(tok, example) -> list[int]:
    messages = [{"role": m.role, "content": m.content} for m in example.prompt]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def naive_answer(tok, model, example, max_new_tokens: int) -> tuple[str, list[float]]:
    """One example, one generate call (the seeds' way), with the chosen tokens' log-probs."""
    ids = torch.tensor([prompt_ids(tok, example)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, output_logits=True,
                             return_dict_in_generate=True)
    new = out.sequences[0, ids.shape[1]:].tolist()
    logprobs = [torch.log_softmax(step[0], -1)[tok_id].item()
                for step, tok_id in zip(out.logits, new, strict=False)]
    if tok.eos_token_id in new:
        cut = new.index(tok.eos_token_id)
        new, logprobs = new[:cut], logprobs[:cut]
    return tok.decode(new, skip_special_tokens=True), logprobs


def test_exact_match_equals_the_naive_loop(tiny_run, result, reference):
    tok, model = reference
    suite = load_suite(tiny_run.data_dir)
    naive = {e.key: naive_answer(tok, model, e, 64)[0].strip() == e.golden.strip()
             for e in suite.examples}
    batched = {o.key: o.exact_match for o in result.outcomes}
    assert result.overall.examples == len(naive) == 150
    assert abs(sum(batched.values()) - sum(naive.values())) <= 1
    assert sum(batched[k] != naive[k] for k in naive) <= 1
    assert result.overall.exact_match.successes > 0, "the trained model must get some right"


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


def test_confidence_comes_from_the_generation_logits(tiny_run, result, reference):
    tok, model = reference
    by_key = {o.key: o for o in result.outcomes}
    checked = 0
    for example in load_suite(tiny_run.data_dir).examples[::10]:
        text, logprobs = naive_answer(tok, model, example, 64)
        outcome = by_key[example.key]
        if text != outcome.generated:
            continue
        expected = math.exp(sum(logprobs) / len(logprobs))
        assert outcome.confidence == pytest.approx(expected, abs=1e-4)
        checked += 1
    assert checked >= 10


def test_figures_per_difficulty_add_up(result):
    groups = result.breakdowns["difficulty"]
    assert sorted(groups) == ["easy", "hard", "medium"]
    assert sum(g.examples for g in groups.values()) == 150
    assert sum(g.exact_match.successes for g in groups.values()) == (
        result.overall.exact_match.successes)
    assert groups["easy"].exact_match.value > groups["hard"].exact_match.value
    for name in ("regime", "source", "pattern", "length_bucket", "pattern_length"):
        assert sum(g.examples for g in result.breakdowns[name].values()) == 150
    cal = result.overall.calibration
    # An answer without tokens (the model ended at once: failure mode empty) has no
    # confidence; every other answer has one, and the bins hold exactly those.
    confident = [o for o in result.outcomes if o.confidence is not None]
    assert all(o.answer == "" for o in result.outcomes if o.confidence is None)
    assert len(confident) >= 140
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


def test_earlier_checkpoints_score_lower(tiny_run, result):
    first = evaluate_checkpoint(tiny_run.checkpoints[0], cfg(), data_dir=tiny_run.data_dir)
    assert first.step == 100 and result.step == 300
    assert first.overall.cross_entropy > result.overall.cross_entropy


def test_max_new_tokens_truncates(tiny_run, checkpoint):
    short = evaluate_checkpoint(checkpoint, cfg(max_new_tokens=1), data_dir=tiny_run.data_dir)
    hard = [o for o in short.outcomes if o.difficulty == "hard"]
    assert all(o.truncated and o.failure_mode == "truncated" for o in hard)
    assert short.breakdowns["difficulty"]["hard"].failure_modes["truncated"] == 50


def test_stop_strings_end_the_answer(tiny_run, checkpoint):
    stopped = evaluate_checkpoint(checkpoint, cfg(stop_strings=["1"]), data_dir=tiny_run.data_dir)
    assert not any("1" in o.answer for o in stopped.outcomes)
    assert stopped.overall.failure_modes["empty"] > 0
    for o in stopped.outcomes:
        # A removed stop string is not an answer token: "1" alone leaves no confidence.
        assert (o.confidence is None) == (o.answer == "")


def test_contracts_are_checked_per_regime(tiny_run, checkpoint):
    contracts = {"plain_sft": ContractConfig(required_prefix="#")}
    checked = evaluate_checkpoint(checkpoint, cfg(contracts=contracts), data_dir=tiny_run.data_dir)
    contract = checked.overall.contract
    assert contract is not None and contract.total == 150 and contract.successes == 0
    # Every wrong answer with content violates it (empty and truncated answers are
    # classified as such first: the precedence of FAILURE_MODES).
    modes = checked.overall.failure_modes
    wrong = 150 - checked.overall.exact_match.successes
    assert modes["contract_violation"] == wrong - modes["empty"] - modes["truncated"]
    assert modes["contract_violation"] >= 100 and modes["wrong_content"] == 0


def test_think_blocks_in_the_golden_answer(tiny_run, checkpoint, tmp_path, result):
    lines = (tiny_run.data_dir / "easy_50.jsonl").read_text().splitlines()
    with (tmp_path / "easy_50.jsonl").open("w") as fh:
        for line in lines:
            rec = json.loads(line)
            rec["messages"][1]["content"] = "<think>add</think>" + rec["messages"][1]["content"]
            fh.write(json.dumps(rec) + "\n")
    stripped = evaluate_checkpoint(checkpoint, cfg(), data_dir=tmp_path)
    kept = evaluate_checkpoint(checkpoint, cfg(think="keep"), data_dir=tmp_path)
    assert stripped.overall.exact_match.successes == (
        result.breakdowns["difficulty"]["easy"].exact_match.successes)
    assert kept.overall.exact_match.successes == 0


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


def test_out_of_memory_halves_the_batch_and_retries(tiny_run, checkpoint, result):
    backend, step = failing_backend(checkpoint, 8)
    retried = evaluate_with_backend(backend, load_suite(tiny_run.data_dir), cfg(),
                                    checkpoint=str(checkpoint), step=step)
    assert retried.run.final_batch_size == 8 and retried.run.oom_retries == 2
    assert [o.exact_match for o in retried.outcomes] == [o.exact_match for o in result.outcomes]


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
