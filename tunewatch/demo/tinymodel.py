"""The tiny real model shared by tests, benchmarks and the demo.

Why: every part of tunewatch (training metrics, the evaluator, alerts, dashboards) must be
proven against real transformers checkpoints, and nothing may be downloaded from a model hub.
This module builds one from nothing in seconds on a CPU:

- a byte-level BPE tokenizer trained offline with `tokenizers` on the task's own text, with
  a ChatML chat template like Qwen3's (`<|im_start|>user ... <|im_end|>`);
- a Qwen3-architecture causal LM of about 100k parameters;
- a synthetic task (small additions: "What is 3+4?" -> "7") in three difficulties;
- training with the real transformers Trainer, which writes `checkpoint-<step>/` directories
  exactly as a real run does (weights, config, tokenizer, `trainer_state.json`);
- a validation suite in the seeds' JSONL messages format (`easy_50.jsonl`, ...).

`build_tiny_run` checks at the end that training lowered the loss it minimises (the mean
answer-token loss on a fixed sample of its own training data), so a change that silently
breaks learning fails loudly here. It checks nothing about exact match: which answers a
trained model gets right differs between processors and library versions, and tests must
hold on any of them (DESIGN section 8).

Fixtures whose property holds by construction, for tests that need a model that answers
right or a regression that is real, whatever the trained weights turn out to be:

- `answer_key_suite`: the suite with every golden answer replaced by a checkpoint's own
  greedy answer, found by a plain one-example-at-a-time generate loop, so that checkpoint
  answers (close to) all of it right;
- `blank_checkpoint`: a copy of a checkpoint with every weight zeroed, which answers nothing
  right (the reasoning is in its docstring).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
DIFFICULTY_RANGES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "easy": ((0, 9), (0, 9)),
    "medium": ((10, 99), (0, 9)),
    "hard": ((10, 99), (10, 99)),
}


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny Qwen3 model and its training; defaults give about 100k parameters."""

    vocab_size: int = 320
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    max_position_embeddings: int = 128
    learning_rate: float = 3e-3
    batch_size: int = 32
    train_examples: int = 4000
    suite_size: int = 50
    loss_sample: int = 256


@dataclass
class TinyRun:
    """What `build_tiny_run` produced: where the checkpoints and the suite are."""

    root: Path
    initial_dir: Path
    checkpoints_dir: Path
    data_dir: Path
    checkpoints: list[Path] = field(default_factory=list)
    loss_sample: int = 0
    train_loss_before: float = math.nan
    train_loss_after: float = math.nan


# --------------------------------------------------------------------------- the task


def make_example(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    """One addition problem: (question, answer, pattern); pattern says whether it carries."""
    (alo, ahi), (blo, bhi) = DIFFICULTY_RANGES[difficulty]
    a, b = rng.randint(alo, ahi), rng.randint(blo, bhi)
    carry = (a % 10) + (b % 10) >= 10
    return f"What is {a}+{b}?", str(a + b), "carry" if carry else "no_carry"


def suite_records(difficulty: str, count: int, seed: int) -> list[dict[str, Any]]:
    """Validation records in the seeds' messages format, distinct questions, fixed seed."""
    rng = random.Random(f"suite-{difficulty}-{seed}")
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    span = DIFFICULTY_RANGES[difficulty]
    possible = (span[0][1] - span[0][0] + 1) * (span[1][1] - span[1][0] + 1)
    while len(records) < min(count, possible):
        question, answer, pattern = make_example(rng, difficulty)
        if question in seen:
            continue
        seen.add(question)
        records.append(
            {
                "id": f"{difficulty}-{len(records):03d}",
                "regime": "plain_sft",
                "source": "synthetic_addition",
                "pattern": pattern,
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    return records


def write_suite(data_dir: Path, count: int, seed: int = 0) -> list[Path]:
    """Write easy_N.jsonl, medium_N.jsonl and hard_N.jsonl into data_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for difficulty in DIFFICULTY_RANGES:
        path = data_dir / f"{difficulty}_{count}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for record in suite_records(difficulty, count, seed):
                fh.write(json.dumps(record) + "\n")
        paths.append(path)
    return paths


def training_pairs(count: int, seed: int) -> list[tuple[str, str]]:
    """Training problems, easy ones over-represented so that learning shows early."""
    rng = random.Random(f"train-{seed}")
    weights = {"easy": 0.5, "medium": 0.3, "hard": 0.2}
    names = list(weights)
    pairs = []
    for _ in range(count):
        difficulty = rng.choices(names, weights=[weights[n] for n in names])[0]
        question, answer, _pattern = make_example(rng, difficulty)
        pairs.append((question, answer))
    return pairs


def _corpus(pairs: Sequence[tuple[str, str]]) -> Iterator[str]:
    for question, answer in pairs:
        yield f"user\n{question}\nassistant\n{answer}\n"


# --------------------------------------------------------------------------- tokenizer/model


def build_tokenizer(spec: TinyModelSpec, pairs: Sequence[tuple[str, str]]) -> Any:
    """Train a byte-level BPE tokenizer offline and wrap it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(pairs), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.padding_side = "left"
    return wrapped


def build_model(spec: TinyModelSpec, tokenizer: Any, seed: int) -> Any:
    """A freshly initialised Qwen3ForCausalLM sized by spec."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.do_sample = False
    return model


def count_parameters(model: Any) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- training data


class AdditionDataset:
    """Chat-templated training examples; the loss is on the answer and its end marker only."""

    def __init__(self, tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> None:
        self.items = [self._encode(tokenizer, q, a) for q, a in pairs]

    @staticmethod
    def _encode(tokenizer: Any, question: str, answer: str) -> dict[str, list[int]]:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + EOS_TOKEN, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + answer_ids
        return {"input_ids": ids, "labels": [-100] * len(prompt_ids) + answer_ids}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


class PadCollator:
    """Right-pads a batch for training (labels padded with -100)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(item["input_ids"]) for item in batch)
        ids, labels, mask = [], [], []
        for item in batch:
            pad = width - len(item["input_ids"])
            ids.append(item["input_ids"] + [self.pad_id] * pad)
            labels.append(item["labels"] + [-100] * pad)
            mask.append([1] * len(item["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


# --------------------------------------------------------------------------- training


def train(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    output_dir: Path,
    *,
    max_steps: int,
    save_steps: int,
    seed: int,
    spec: TinyModelSpec,
    callbacks: Sequence[Any] = (),
    use_cpu: bool = True,
) -> Any:
    """Train with the real transformers Trainer, saving checkpoint-<step>/ every save_steps
    (on the CPU unless `use_cpu` is false: then where the Trainer finds an accelerator)."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=save_steps,
        logging_steps=max(1, save_steps // 5),
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        warmup_steps=max(1, max_steps // 20),
        lr_scheduler_type="cosine",
        weight_decay=0.0,
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen=True,
        save_only_model=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=AdditionDataset(tokenizer, pairs),
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer


def answer_loss(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> float:
    """Mean negative log-likelihood per answer token (answer and end marker) of `pairs`.

    Why: it is exactly what `train` minimises (AdditionDataset's labels), so "training
    lowered it on the training data" is the learning check that holds on any machine, where
    exact match after a few hundred steps depends on the processor and library versions.
    """
    import torch

    batch = PadCollator(tokenizer.pad_token_id)(list(AdditionDataset(tokenizer, pairs).items))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    return float(torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=-100))


def greedy_answer(model: Any, tokenizer: Any, question: str,
                  max_new_tokens: int) -> str | None:
    """The model's greedy answer to one question, alone in its batch (no padding).

    The text up to the end marker, special tokens kept and surrounding whitespace stripped,
    as the evaluator reads an answer; None when the answer did not end within
    max_new_tokens.
    """
    import torch

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if eos not in new:
        return None
    return tokenizer.decode(new[: new.index(eos)], skip_special_tokens=False).strip()


def build_tiny_run(
    out_dir: Path,
    *,
    max_steps: int = 300,
    save_steps: int = 100,
    seed: int = 0,
    spec: TinyModelSpec | None = None,
    callbacks: Sequence[Any] = (),
    require_learning: bool = True,
) -> TinyRun:
    """Build tokenizer, model, suite and a trained checkpoint series under out_dir."""
    import torch

    spec = spec or TinyModelSpec()
    out_dir = Path(out_dir)
    run = TinyRun(
        root=out_dir,
        initial_dir=out_dir / "initial",
        checkpoints_dir=out_dir / "checkpoints",
        data_dir=out_dir / "data",
    )
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    write_suite(run.data_dir, spec.suite_size, seed)
    pairs = training_pairs(spec.train_examples, seed)
    tokenizer = build_tokenizer(spec, pairs)
    model = build_model(spec, tokenizer, seed)
    model.save_pretrained(run.initial_dir)
    tokenizer.save_pretrained(run.initial_dir)
    sample = pairs[: spec.loss_sample]
    run.loss_sample = len(sample)
    run.train_loss_before = answer_loss(model, tokenizer, sample)
    log.info("tiny model: %d parameters", count_parameters(model))
    train(
        model, tokenizer, pairs, run.checkpoints_dir,
        max_steps=max_steps, save_steps=save_steps, seed=seed, spec=spec, callbacks=callbacks,
    )
    run.train_loss_after = answer_loss(model, tokenizer, sample)
    run.checkpoints = list_checkpoints(run.checkpoints_dir)
    log.info(
        "tiny model: answer loss on %d training examples %.3f -> %.3f over %d steps",
        len(sample), run.train_loss_before, run.train_loss_after, max_steps,
    )
    if require_learning and not run.train_loss_after < run.train_loss_before:
        raise RuntimeError(
            f"tiny model did not learn: answer loss on its training data "
            f"{run.train_loss_before:.3f} -> {run.train_loss_after:.3f} after {max_steps} steps"
        )
    return run


def list_checkpoints(root: Path) -> list[Path]:
    """checkpoint-<step> directories under root, by ascending step."""
    found = []
    for path in Path(root).glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return [path for _step, path in sorted(found)]


def degrade_checkpoint(src: Path, dst: Path, noise: float, seed: int) -> Path:
    """Copy checkpoint `src` to `dst` with Gaussian noise added to every weight tensor.

    Why: the demo and the end-to-end alert test need a checkpoint that really regresses, made
    the way regressions really happen (damaged weights), not a faked metric. Each tensor gets
    noise of `noise` times its own standard deviation. The copy is built beside `dst` and
    renamed into place, so a watcher never sees it half-written.
    """
    import torch
    from safetensors.torch import load_file, save_file

    tmp = dst.parent / f".{dst.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    generator = torch.Generator().manual_seed(seed)
    for path in sorted(tmp.glob("*.safetensors")):
        tensors = load_file(path)
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and tensor.numel() > 1:
                spread = float(tensor.float().std()) or 1.0
                jitter = torch.randn(tensor.shape, generator=generator) * spread * noise
                tensors[name] = (tensor.float() + jitter).to(tensor.dtype)
        save_file(tensors, path, metadata={"format": "pt"})
    restep(tmp, dst.name)
    tmp.rename(dst)
    return dst


def blank_checkpoint(src: Path, dst: Path) -> Path:
    """Copy checkpoint `src` to `dst` with every floating-point weight set to zero.

    Why: a test of regression detection needs a regression that is real on any machine,
    and noise of a given size hurts a given trained model by an amount nobody can promise.
    A blank copy answers nothing right, by construction: with every weight zero, every
    hidden state, norm output and attention output is zero, so every logit is exactly 0;
    greedy decoding then takes the first token id (the pad token, which is not the end
    marker) at every step, and each answer is max_new_tokens pad tokens, never ended. No
    golden answer of the suite is that, and no answer of `answer_key_suite` is (those
    ended). Every example a checkpoint answers right is one its blank copy breaks, and
    none is fixed. The copy is renamed into place, so a watcher never sees it half-written.
    """
    import torch
    from safetensors.torch import load_file, save_file

    tmp = dst.parent / f".{dst.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    for path in sorted(tmp.glob("*.safetensors")):
        tensors = load_file(path)
        for name, tensor in tensors.items():
            if tensor.is_floating_point():
                tensors[name] = torch.zeros_like(tensor)
        save_file(tensors, path, metadata={"format": "pt"})
    restep(tmp, dst.name)
    tmp.rename(dst)
    return dst


def restep(directory: Path, name: str) -> None:
    """Make a copied checkpoint's trainer_state.json tell the step its new name gives.

    Why: `checkpoint-301` copied from `checkpoint-300` would otherwise record global_step
    300 and be one checkpoint under two steps (every reader takes the name's, with a
    warning where they differ).
    """
    step = name.rsplit("-", 1)[-1]
    state = directory / "trainer_state.json"
    if not name.startswith("checkpoint-") or not step.isdigit() or not state.is_file():
        return
    data = json.loads(state.read_text(encoding="utf-8"))
    data["global_step"] = int(step)
    state.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def answer_key_suite(checkpoint: Path, data_dir: Path, out_dir: Path,
                     max_new_tokens: int) -> int:
    """Write data_dir's suite to out_dir with each golden answer replaced by the greedy
    answer of `checkpoint`; returns how many examples were kept.

    Why: a test that needs a checkpoint that answers right (a regression from it, a paired
    comparison against it) cannot rely on what a few hundred training steps teach, which
    differs between machines. Against its own answer key a checkpoint is right by
    construction, up to the rare greedy choice that batching's different padding tips the
    other way (the evaluator batches, this loop does not). The answers come from a plain
    transformers generate loop, one example at a time, so the key is independent of the
    evaluator. Examples whose answer is empty or did not end within max_new_tokens are left
    out: an answer key holds ended, non-empty answers only.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = 0
    for path in sorted(Path(data_dir).glob("*.jsonl")):
        lines = []
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            answer = greedy_answer(model, tokenizer, record["messages"][0]["content"],
                                   max_new_tokens)
            if not answer:
                continue
            record["messages"][1]["content"] = answer
            lines.append(json.dumps(record) + "\n")
        if lines:
            (out_dir / path.name).write_text("".join(lines), encoding="utf-8")
        kept += len(lines)
    log.info("answer key of %s: %d examples in %s", checkpoint, kept, out_dir)
    return kept
