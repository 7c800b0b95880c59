"""The tiny real model every test shares: real checkpoints, and training really teaches it.

"Teaches" is asserted as what holds on any machine: training lowers the loss it minimises on
its own data. How many answers it then gets right differs between processors and library
versions, so nothing here counts them (DESIGN section 8).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunewatch.demo.tinymodel import (
    TinyModelSpec,
    build_model,
    build_tokenizer,
    count_parameters,
    training_pairs,
)


def reference_answer_loss(model_dir, pairs) -> float:
    """Mean NLL per answer token (answer and end marker), one example at a time with torch:
    an independent computation of what build_tiny_run reports."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, tokens = 0.0, 0
    for question, answer in pairs:
        prompt = tok.apply_chat_template([{"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tok(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0]
        total += torch.nn.functional.cross_entropy(
            logits[len(prompt_ids) - 1 : -1], torch.tensor(answer_ids), reduction="sum").item()
        tokens += len(answer_ids)
    return total / tokens


def test_training_lowers_the_loss_on_its_own_data(tiny_run):
    assert math.isfinite(tiny_run.train_loss_before) and math.isfinite(tiny_run.train_loss_after)
    assert tiny_run.train_loss_after < tiny_run.train_loss_before
    # The figures are those of the saved weights: the initial model and the last checkpoint.
    spec = TinyModelSpec()
    sample = training_pairs(spec.train_examples, 0)[: tiny_run.loss_sample]
    assert tiny_run.loss_sample == spec.loss_sample
    before = reference_answer_loss(tiny_run.initial_dir, sample)
    after = reference_answer_loss(tiny_run.checkpoints[-1], sample)
    assert tiny_run.train_loss_before == pytest.approx(before, rel=1e-4)
    assert tiny_run.train_loss_after == pytest.approx(after, rel=1e-4)


def test_checkpoints_are_written_like_transformers_does(tiny_run):
    steps = [int(p.name.split("-")[1]) for p in tiny_run.checkpoints]
    assert steps == [100, 200, 300]
    last = tiny_run.checkpoints[-1]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.json"):
        assert (last / name).is_file(), name
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == 300
    logged = [e for e in state["log_history"] if "loss" in e]
    # Logged every logging_steps (save_steps // 5), each a finite, positive loss.
    assert [e["step"] for e in logged] == list(range(20, 301, 20))
    assert all(math.isfinite(e["loss"]) and e["loss"] > 0 for e in logged)


def test_model_is_a_small_qwen3_with_a_chat_template(tiny_run):
    config = json.loads((tiny_run.checkpoints[-1] / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_run.checkpoints[-1])
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 1+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nWhat is 1+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok("12+34=46")["input_ids"]) == "12+34=46"


def test_parameter_count_is_about_100k():
    spec = TinyModelSpec()
    tok = build_tokenizer(spec, [("What is 1+2?", "3")] * 20)
    n = count_parameters(build_model(spec, tok, seed=0))
    assert 50_000 <= n <= 200_000


def test_suite_is_in_the_seeds_messages_format(tiny_run):
    files = sorted(p.name for p in tiny_run.data_dir.glob("*.jsonl"))
    assert files == ["easy_50.jsonl", "hard_50.jsonl", "medium_50.jsonl"]
    lines = (tiny_run.data_dir / "hard_50.jsonl").read_text().splitlines()
    assert len(lines) == 50
    record = json.loads(lines[0])
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
    assert record["pattern"] in {"carry", "no_carry"}
