"""The tiny real model every test shares: real checkpoints, and training really teaches it."""

from __future__ import annotations

import json

from tunewatch.tinymodel import TinyModelSpec, build_model, build_tokenizer, count_parameters


def test_exact_match_rises_with_training(tiny_run):
    assert tiny_run.exact_match_after > tiny_run.exact_match_before
    assert tiny_run.exact_match_after >= 0.3


def test_checkpoints_are_written_like_transformers_does(tiny_run):
    steps = [int(p.name.split("-")[1]) for p in tiny_run.checkpoints]
    assert steps == [100, 200, 300]
    last = tiny_run.checkpoints[-1]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.json"):
        assert (last / name).is_file(), name
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == 300
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]


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
