"""The evaluator's costs on real vocabularies, held to the figures it computed before.

The local backend records each generated token's log-probability while generating (no
full-vocabulary logits kept per step) and scores golden answers from the generation's
prefill (the prompt is not run again); both must give the numbers the old way gives: the
log-softmax of `generate(output_logits=True)`'s raw logits, and torch's cross_entropy over
prompt + golden. Then: batches sorted by length with outcomes in the suite's order, the
context guard, quick mode, and the realistic benchmark's smoke run.

Every test uses the session's tiny checkpoint or a model built here in well under a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from benchsupport import run_bench
from transformers import AutoModelForCausalLM, AutoTokenizer

from evaluators.backends.local import GOLDEN_CHUNK, LocalBackend
from evaluators.data import Suite, load_suite
from evaluators.errors import EvaluationError
from evaluators.evaluate import evaluate_checkpoint, evaluate_with_backend
from tunewatch.commands import eval_once
from tunewatch.core.config import Config, EvaluatorConfig

pytestmark = pytest.mark.slow

LOGPROB_TOLERANCE = 1e-5  # the same float32 log-softmax of the same logits
CE_TOLERANCE = 1e-4  # padding and cache layout change float32 rounding only
NEW_TOKENS = 16


def cfg(**changes: object) -> EvaluatorConfig:
    return dataclasses.replace(EvaluatorConfig(), device="cpu", **changes)


@pytest.fixture(scope="module")
def checkpoint(tiny_run) -> Path:
    return tiny_run.checkpoints[-1]


@pytest.fixture(scope="module")
def examples(tiny_run):
    return load_suite(tiny_run.data_dir).examples


@pytest.fixture(scope="module")
def backend(checkpoint) -> LocalBackend:
    loaded, _info = LocalBackend.load(checkpoint, device="cpu")
    return loaded


def chosen(steps, generated) -> list[list[float]]:
    return torch.cat([torch.log_softmax(step.float(), -1).gather(-1, generated[:, t:t + 1])
                      for t, step in enumerate(steps)], dim=1).tolist()


def reference_logprobs(backend: LocalBackend, prompts) -> tuple[list[list[int]], list, list]:
    """The old way: generate with output_logits=True, log-softmax of each raw step; and of
    the processed scores (output_scores), which the figures must not be."""
    ids, mask = backend._left_padded([backend.encode_prompt(p) for p in prompts])
    with torch.inference_mode():
        out = backend.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
            temperature=None, top_p=None, top_k=None, eos_token_id=backend.eos_ids,
            pad_token_id=backend.pad_id, return_dict_in_generate=True, output_logits=True,
            output_scores=True)
    generated = out.sequences[:, ids.shape[1]:]
    return generated.tolist(), chosen(out.logits, generated), chosen(out.scores, generated)


@pytest.mark.parametrize("penalty", [None, 1.5])
def test_logprobs_equal_the_raw_logits_of_output_logits(backend, examples, penalty):
    """With and without a processor that changes the scores (a repetition penalty in the
    checkpoint's generation_config): the log-probabilities are the raw logits', as before."""
    prompts = [e.prompt for e in examples[::5]]
    config = backend.model.generation_config
    saved = config.repetition_penalty
    config.repetition_penalty = penalty
    try:
        expected_ids, expected, processed = reference_logprobs(backend, prompts)
        found = backend.generate(prompts, NEW_TOKENS, [])
    finally:
        config.repetition_penalty = saved
    gaps = []
    for gen, ids, lps, scored in zip(found, expected_ids, expected, processed, strict=True):
        end = next((i for i, t in enumerate(ids) if t in backend.eos_ids), len(ids))
        assert gen.text == backend._decode(ids[:end])
        assert gen.logprobs is not None and len(gen.logprobs) == end
        assert gen.logprobs == pytest.approx(lps[:end], abs=LOGPROB_TOLERANCE)
        gaps.extend(abs(a - b) for a, b in zip(gen.logprobs, scored, strict=False))
    # With the penalty, the processed scores' log-probabilities differ (so the check above
    # tells raw from processed); without it they are the raw ones.
    assert (max(gaps) > 100 * LOGPROB_TOLERANCE) == (penalty is not None)


def reference_cross_entropy(tok, model, prompt: list[int], golden: list[int]) -> float:
    """torch's cross_entropy of the golden tokens after the unpadded prompt."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + golden])).logits[0]
    return torch.nn.functional.cross_entropy(
        logits[len(prompt) - 1: -1], torch.tensor(golden)).item()


class ForwardWidths:
    """Records the input width of every forward pass of a model (a real hook, no stub)."""

    def __init__(self, model) -> None:
        self.widths: list[int] = []
        self.rows: list[int] = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, _module, _args, kwargs) -> None:
        self.rows.append(int(kwargs["input_ids"].shape[0]))
        self.widths.append(int(kwargs["input_ids"].shape[1]))


def test_cross_entropy_from_the_prefill_equals_torch_cross_entropy(checkpoint, backend,
                                                                    examples):
    """Goldens of 1 to more than two chunks of tokens in one batch: scored right after
    generate, the forward passes run over the golden tokens only, and each figure equals
    torch's cross_entropy over prompt + golden; scored on their own (no generation before),
    the one-pass fallback gives the same."""
    chosen = examples[:6]
    prompts = [e.prompt for e in chosen]
    digits = "".join(str(i % 10) for i in range(2 * GOLDEN_CHUNK + 3))
    goldens = ["7", "12", "4 apples", digits[:GOLDEN_CHUNK], digits[:GOLDEN_CHUNK + 1], digits]
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    gold_ids = [backend.golden_ids(g) for g in goldens]
    assert gold_ids[0] and len(gold_ids[-1]) > 2 * GOLDEN_CHUNK
    expected = [reference_cross_entropy(tok, model, backend.encode_prompt(p), g)
                for p, g in zip(prompts, gold_ids, strict=True)]

    backend.generate(prompts, 4, [])
    widths = ForwardWidths(backend.model)
    try:
        after_prefill = backend.score(prompts, goldens)
    finally:
        widths.handle.remove()
    longest = max(len(g) for g in gold_ids) - 1
    assert sum(widths.widths) == longest and max(widths.widths) <= GOLDEN_CHUNK
    alone = backend.score(prompts, goldens)
    for fast, slow, ids, ce in zip(after_prefill, alone, gold_ids, expected, strict=True):
        assert fast.tokens == slow.tokens == len(ids)
        assert fast.nll / fast.tokens == pytest.approx(ce, abs=CE_TOLERANCE)
        assert slow.nll / slow.tokens == pytest.approx(ce, abs=CE_TOLERANCE)


def generation_text(backend: LocalBackend, ids: list[int]) -> str:
    """A generated row's text up to its first EOS."""
    end = next((k for k, tok in enumerate(ids) if tok in backend.eos_ids), len(ids))
    return backend.tokenizer.decode(ids[:end], skip_special_tokens=False)


def generated_goldens(backend: LocalBackend, chosen, generated) -> tuple[list[str], list[bool]]:
    """Goldens for a mixed batch: each row but the second its own generation, where that
    text tokenizes back to the generated ids (so the generation began with the golden
    tokens); the second row, and any whose text does not, a golden the model never
    generates (its answer with words after it)."""
    goldens, free = [], []
    for i, (example, ids) in enumerate(zip(chosen, generated, strict=True)):
        text = generation_text(backend, ids)
        if i != 1 and text and ids[: len(backend.golden_ids(text))] == backend.golden_ids(text):
            goldens.append(text)
            free.append(True)
        else:
            goldens.append(f"{example.golden} and then some more words")
            free.append(False)
    return goldens, free


def test_rows_that_generated_their_golden_need_no_scoring_pass(checkpoint, backend, examples):
    """A row whose generation began with its golden tokens is scored from the generation's
    own log-probabilities (each step saw exactly the prefix teacher forcing feeds): only the
    other rows run through the model, on the cache cut down to them, and every figure still
    equals torch's cross_entropy over prompt + golden."""
    chosen = examples[:8]
    prompts = [e.prompt for e in chosen]
    backend.generate(prompts, NEW_TOKENS, [])
    assert backend._prefill is not None  # white box: the ids the rule compares
    goldens, free = generated_goldens(backend, chosen, backend._prefill.generated)
    assert any(free) and not all(free)
    gold_ids = [backend.golden_ids(g) for g in goldens]
    passes = ForwardWidths(backend.model)
    try:
        scores = backend.score(prompts, goldens)
    finally:
        passes.handle.remove()
    through_model = [g for g, f in zip(gold_ids, free, strict=True) if not f]
    assert set(passes.rows) == {len(through_model)}
    assert sum(passes.widths) == max(len(g) for g in through_model) - 1
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    for prompt, score, ids in zip(prompts, scores, gold_ids, strict=True):
        expected = reference_cross_entropy(tok, model, backend.encode_prompt(prompt), ids)
        assert score.tokens == len(ids)
        assert score.nll / score.tokens == pytest.approx(expected, abs=CE_TOLERANCE)

    # Every row scored against its own generation: the rows whose text tokenizes back to
    # the generated ids need nothing more, so only the others (if any) run through the model.
    backend.generate(prompts, NEW_TOKENS, [])
    assert backend._prefill is not None
    generated = backend._prefill.generated
    texts = [generation_text(backend, ids) for ids in generated]
    through_model = [i for i, (ids, text) in enumerate(zip(generated, texts, strict=True))
                     if not text or ids[: len(backend.golden_ids(text))]
                     != backend.golden_ids(text)]
    passes = ForwardWidths(backend.model)
    try:
        own = backend.score(prompts, texts)
    finally:
        passes.handle.remove()
    if through_model:
        assert set(passes.rows) == {len(through_model)}
    else:
        assert passes.widths == []  # the whole batch answered as its goldens say: no pass
    for i, was_free in enumerate(free):  # the same batch, the same generation: same figure
        if was_free:
            assert i not in through_model
            assert own[i].nll == pytest.approx(scores[i].nll, abs=CE_TOLERANCE)


def test_a_different_batch_is_not_scored_from_the_prefill(backend, examples):
    """The prefill belongs to the prompts generated last: other prompts run prompt + golden."""
    backend.generate([e.prompt for e in examples[:4]], 2, [])
    other = examples[4:8]
    widths = ForwardWidths(backend.model)
    try:
        scores = backend.score([e.prompt for e in other], [e.golden for e in other])
    finally:
        widths.handle.remove()
    longest = max(backend.prompt_tokens(e.prompt) + backend.golden_tokens(e.golden)
                  for e in other)
    assert widths.widths == [longest]
    assert all(s.nll is not None and s.nll > 0 for s in scores)


def test_batches_sort_by_length_and_outcomes_keep_the_suite_order(tiny_run, backend,
                                                                   examples):
    """The same suite in another order: batched the same (sorted by prompt, then golden
    length; the content key breaks ties), so every outcome is the same, returned in the
    order given; every batch is a run of similar prompt lengths."""
    shuffled = list(examples)
    random.Random(7).shuffle(shuffled)
    lengths: list[list[int]] = []

    class Recording(LocalBackend):
        def generate(self, prompts, max_new_tokens, stops):
            lengths.append([self.prompt_tokens(p) for p in prompts])
            return super().generate(prompts, max_new_tokens, stops)

    recording = Recording(backend.model, backend.tokenizer, "cpu", backend.plain_prompts)
    settings = cfg(batch_size=16)
    ordered = evaluate_with_backend(recording, Suite(list(examples), ["suite"]), settings,
                                    checkpoint="c", step=None)
    batches_in_order = list(lengths)
    lengths.clear()
    mixed = evaluate_with_backend(recording, Suite(shuffled, ["suite"]), settings,
                                  checkpoint="c", step=None)
    assert lengths == batches_in_order
    assert [o.key for o in ordered.outcomes] == [e.key for e in examples]
    assert [o.key for o in mixed.outcomes] == [e.key for e in shuffled]
    by_key = {o.key: o for o in ordered.outcomes}
    for o in mixed.outcomes:
        assert o == by_key[o.key]
    flat = [n for batch in batches_in_order for n in batch]
    assert flat == sorted(flat)
    suite_order = [backend.prompt_tokens(e.prompt) for e in examples]
    padding = sum(max(b) * len(b) - sum(b) for b in batches_in_order)
    unsorted = [suite_order[i:i + 16] for i in range(0, len(suite_order), 16)]
    assert padding <= sum(max(b) * len(b) - sum(b) for b in unsorted)


def with_positions(checkpoint: Path, target: Path, positions: int) -> Path:
    shutil.copytree(checkpoint, target)
    config = json.loads((target / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_context_guard_leaves_out_examples_that_do_not_fit(tiny_run, checkpoint, backend,
                                                            examples, tmp_path):
    """A model with fewer positions than some prompts need: exactly the examples whose prompt
    + max(max_new_tokens, golden) exceeds them are left out, listed with the reason; the
    others are evaluated as on the model with room (cross-entropy does not depend on it)."""
    budget = 8
    needs = {e.key: backend.prompt_tokens(e.prompt) + max(budget, backend.golden_tokens(e.golden))
             for e in examples}
    limit = sorted(needs.values())[len(needs) // 2]
    small = with_positions(checkpoint, tmp_path / "checkpoint-300", limit)
    settings = cfg(max_new_tokens=budget)
    guarded = evaluate_checkpoint(small, settings, data_dir=tiny_run.data_dir)
    roomy = {o.key: o for o in evaluate_checkpoint(checkpoint, settings,
                                                   data_dir=tiny_run.data_dir).outcomes}
    fits = {k for k, n in needs.items() if n <= limit}
    assert 0 < len(fits) < len(examples)
    assert {o.key for o in guarded.outcomes} == fits
    refused = [s for s in guarded.suite.skipped if s.reason.startswith("not evaluated")]
    assert len(refused) == len(examples) - len(fits) == guarded.suite.available - len(fits)
    origins = {e.origin: e.key for e in examples}
    for line in refused:
        assert needs[origins[line.where()]] > limit
        assert f"the model has {limit}" in line.reason
    for o in guarded.outcomes:
        assert o.cross_entropy == pytest.approx(roomy[o.key].cross_entropy, abs=CE_TOLERANCE)
    with pytest.raises(EvaluationError) as nothing:
        evaluate_checkpoint(small, cfg(max_new_tokens=limit), data_dir=tiny_run.data_dir)
    assert nothing.value.reason == "data"


def learned_positions_checkpoint(checkpoint: Path, target: Path, positions: int) -> Path:
    """A random GPT-2 (learned position embeddings: a position past the table is an index
    error) with the tiny checkpoint's tokenizer and chat template."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(checkpoint)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tok), n_positions=positions, n_embd=32, n_layer=1, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def test_context_guard_prevents_the_index_error_of_learned_positions(tiny_run, checkpoint,
                                                                     examples, tmp_path):
    loaded, _info = LocalBackend.load(checkpoint, device="cpu")
    prompt_lengths = sorted(loaded.prompt_tokens(e.prompt) for e in examples)
    budget = 4
    positions = prompt_lengths[len(prompt_lengths) // 2] + budget
    gpt2 = learned_positions_checkpoint(checkpoint, tmp_path / "checkpoint-1", positions)
    model = AutoModelForCausalLM.from_pretrained(gpt2)
    with pytest.raises(IndexError):  # what an unguarded pass would run into
        model(torch.zeros((1, positions + 1), dtype=torch.long))
    result = evaluate_checkpoint(gpt2, cfg(max_new_tokens=budget), data_dir=tiny_run.data_dir)
    assert 0 < result.overall.examples < len(examples)
    assert len(result.suite.skipped) == len(examples) - result.overall.examples
    backend, _info = LocalBackend.load(gpt2, device="cpu")
    longest = max(examples, key=lambda e: backend.prompt_tokens(e.prompt))
    with pytest.raises(EvaluationError, match="positions"):
        backend.generate([longest.prompt], positions, [])


def test_quick_mode_is_the_full_evaluation_without_cross_entropy(tiny_run, checkpoint):
    full = evaluate_checkpoint(checkpoint, cfg(), data_dir=tiny_run.data_dir, limit=30)
    quick = evaluate_checkpoint(checkpoint, cfg(), data_dir=tiny_run.data_dir, limit=30,
                                quick=True)
    assert quick.run.quick and not full.run.quick
    assert quick.overall.cross_entropy is None and full.overall.cross_entropy is not None
    for q, f in zip(quick.outcomes, full.outcomes, strict=True):
        assert (q.key, q.generated, q.exact_match, q.failure_mode, q.truncated) == (
            f.key, f.generated, f.exact_match, f.failure_mode, f.truncated)
        assert q.confidence == f.confidence and q.golden_tokens == f.golden_tokens
        assert q.cross_entropy is None and q.nll is None
    assert quick.overall.exact_match == full.overall.exact_match
    assert quick.overall.calibration == full.overall.calibration


def test_eval_once_quick_flag(tiny_run, checkpoint, capsys):
    parser = argparse.ArgumentParser()
    eval_once.add_arguments(parser)
    args = parser.parse_args([str(checkpoint), "--data", str(tiny_run.data_dir), "--quick",
                              "--json", "--limit", "6", "--device", "cpu"])
    assert eval_once.run(args, Config()) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run"]["quick"] is True
    assert printed["overall"]["cross_entropy"] is None
    assert all(o["cross_entropy"] is None for o in printed["outcomes"])
    assert len(printed["outcomes"]) == 6


def test_realistic_bench_smoke():
    """The benchmark's three paths on a Qwen3-vocabulary model agree answer for answer."""
    figures = run_bench("bench_eval_realistic.py", "--smoke")
    assert figures["model"]["vocab_size"] == 151_936 and figures["examples"] == 8
    assert figures["answers_identical"] and not figures["answers_differing"]
    paths = figures["paths"]
    assert set(paths) == {"plain", "full", "quick"}
    assert figures["full_cross_entropy"] > 0 and figures["quick_cross_entropy_absent"]
    assert figures["full_with_confidence"] == figures["quick_with_confidence"] > 0
    for path in paths.values():
        assert path["generated_tokens"] == paths["plain"]["generated_tokens"]
        assert path["peak_rss_bytes"] >= path["rss_before_bytes"] > 0
    # Quick mode runs exactly the model work of plain generation; the full evaluation adds at
    # most one forward pass per batch (golden answers of at most 16 tokens), no prompt again.
    plain, full, quick = (paths[p] for p in ("plain", "full", "quick"))
    assert (quick["forward_passes"], quick["output_layer_rows"]) == (
        plain["forward_passes"], plain["output_layer_rows"])
    batches = -(-figures["examples"] // figures["batch_size"])
    assert plain["forward_passes"] < full["forward_passes"] <= plain["forward_passes"] + batches
    assert figures["full_speed_ratio"] == pytest.approx(
        paths["full"]["examples_per_second"] / paths["plain"]["examples_per_second"])
