"""Benchmark: the evaluator on a model of realistic shape (Qwen3's 151,936-token vocabulary).

Why: the tiny model's vocabulary of a few hundred tokens hides what a real one costs: a
full-vocabulary tensor per generated step, a teacher-forced pass whose logits are as wide as
the vocabulary. This builds, in a temporary directory and with nothing downloaded:

- the tiny model's tokenizer with its vocabulary filled up to 151,936 tokens (the extra ones
  are never produced by its merges but decode, so random weights give decodable answers);
- a Qwen3 model from config: hidden 512, intermediate 1536, 4 layers, 8 heads (4 key/value
  heads), Qwen3's tied embeddings and 40,960 positions, random weights;
- the tiny task's suite (additions in three difficulties).

Then it times, on the same examples and in the evaluator's own batches (sorted by length):

- plain: a batched `model.generate` loop and nothing else, the floor every evaluator pays;
- full: the evaluation (`evaluate_with_backend`): generation, confidence, cross-entropy,
  calibration and every breakdown;
- quick: the same without the teacher-forced pass (`eval-once --quick`).

Timing runs the three paths in one process on one loaded model, batch by batch and in a
rotating order, for --rounds rounds; a path's time is the sum over batches of its fastest
round. Other processes on a shared 2-core machine slow a batch, not a path: pass-by-pass
timing in separate processes moved the ratios by 10% from one run to the next. CPU time is
reported beside the wall clock. Timing covers the passes, not the load. `--threads 1` is
steadier where other jobs share the machine: two torch threads wait for each other whenever
one of them is descheduled. The work each path does (forward passes, rows through the
output layer) is counted too, which no other job can disturb.

Memory is measured apart, each path (and `logits`: the plain loop with
`output_logits=True`, as the evaluator ran before) in a child process of its own over the
first two batches: the RSS high-water mark (VmHWM; tracemalloc does not see torch's
allocator), reset after the model is loaded and a warm-up example ran
(/proc/self/clear_refs), read after the batches, with the RSS before them beside it. The
children run with glibc's mmap threshold fixed at 1 MiB (MALLOC_MMAP_THRESHOLD_), so that a
freed tensor goes back to the system and RSS follows the tensors alive: with the default, a
freed 10 MB block may stay in a heap arena, and the same pass peaked anywhere from 10 to
350 MB above its start from one run to the next (measured on 2026-12-01). --smoke runs
everything in this process.

    python bench/bench_eval_realistic.py              # 32 examples, 4 rounds (a few minutes)
    python bench/bench_eval_realistic.py --smoke      # a small model and 8 examples (a test)
    python bench/bench_eval_realistic.py --max-new-tokens 8 --limit 96 --json

Exit status 1 when the answers differ between paths or rounds, or (not --smoke) a target is
missed: full >= 0.9x plain examples/s, quick >= 1.0x, full's peak RSS <= 1.2x plain's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("bench_eval_realistic")

QWEN3_VOCAB = 151_936
QWEN3_POSITIONS = 40_960
PATHS = ("plain", "full", "quick")
MEMORY_PATH = "logits"
MEMORY_BATCHES = 2  # batches a memory child runs: the peak is one batch's
TARGETS = {"full_speed": 0.9, "quick_speed": 1.0, "full_memory": 1.2}
TOKENIZER_PAIRS = 2000  # training problems the tokenizer's merges are learnt from
SUITE_PER_DIFFICULTY = 250
MMAP_THRESHOLD_BYTES = 1 << 20  # glibc: larger blocks are mapped, and unmapped when freed
# Half the evaluator's default budget: a random model never ends an answer, so every step
# runs; 32 examples x 32 steps x 3 paths x 4 rounds keep the benchmark at a few minutes.
NEW_TOKENS = 32


@dataclass(frozen=True)
class Shape:
    """The model's sizes (Qwen3's proportions: intermediate 3x hidden, head_dim 64)."""

    hidden: int = 512
    intermediate: int = 1536
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    head_dim: int = 64


SMOKE_SHAPE = Shape(hidden=64, intermediate=192, layers=2, heads=4, kv_heads=2, head_dim=16)


# --------------------------------------------------------------------------- the model


def build_tokenizer(vocab_size: int) -> Any:
    """The tiny model's BPE tokenizer, its vocabulary filled up to `vocab_size` ids."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from tunewatch.demo import tinymodel

    base = tinymodel.build_tokenizer(tinymodel.TinyModelSpec(),
                                     tinymodel.training_pairs(TOKENIZER_PAIRS, seed=0))
    data = json.loads(base.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for token_id in range(len(vocab), vocab_size):
        vocab[f"<x{token_id}>"] = token_id  # no merge makes it: decodable, never encoded
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        eos_token=tinymodel.EOS_TOKEN, pad_token=tinymodel.PAD_TOKEN,
        additional_special_tokens=tinymodel.SPECIAL_TOKENS[1:])
    tokenizer.chat_template = tinymodel.CHAT_TEMPLATE
    return tokenizer


def build_checkpoint(target: Path, shape: Shape, seed: int = 0) -> Path:
    """A checkpoint directory: the filled-up tokenizer and a random-weight Qwen3 model."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tunewatch.demo import tinymodel

    tokenizer = build_tokenizer(QWEN3_VOCAB)
    eos = tokenizer.convert_tokens_to_ids(tinymodel.EOS_TOKEN)
    pad = tokenizer.convert_tokens_to_ids(tinymodel.PAD_TOKEN)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=QWEN3_VOCAB, hidden_size=shape.hidden,
        intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim, max_position_embeddings=QWEN3_POSITIONS,
        tie_word_embeddings=True, eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.do_sample = False
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


# --------------------------------------------------------------------------- one path


def status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmRSS: now, VmHWM: the high-water mark), in bytes;
    where it cannot be read, the lifetime peak of getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> None:
    """Start a new high-water mark at the current RSS (Linux 4.0+; elsewhere the peak stays
    the lifetime one, which only over-states every path alike)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        log.warning("cannot reset the RSS high-water mark: peaks include the model load")


@dataclass
class Setup:
    """One loaded model and what every path needs: the examples in the evaluator's batches,
    the evaluator's settings, and a backend with and one without teacher forcing."""

    batches: list[list[Any]]
    cfg: Any
    full: Any
    quick: Any

    @classmethod
    def load(cls, args: argparse.Namespace, model: Path, data: Path) -> Setup:
        from evaluators.backends.local import LocalBackend
        from evaluators.data import load_suite, quick_subset
        from evaluators.evaluate import regime_batches
        from tunewatch.core.config import EvaluatorConfig

        examples = quick_subset(load_suite(data).examples, args.limit)
        cfg = dataclasses.replace(EvaluatorConfig(), device="cpu",
                                  batch_size=args.batch_size,
                                  max_new_tokens=args.max_new_tokens)
        full, _info = LocalBackend.load(model, device="cpu")
        quick = LocalBackend(full.model, full.tokenizer, "cpu", full.plain_prompts,
                             teacher_forcing=False)
        return cls(regime_batches(full, examples, args.batch_size), cfg, full, quick)


def plain_batch(backend: Any, batch: list[Any], max_new_tokens: int,
                keep_logits: bool) -> dict[str, Any]:
    """The floor: model.generate on one batch, answers decoded up to EOS."""
    import torch

    input_ids, mask = backend._left_padded([backend.encode_prompt(e.prompt) for e in batch])
    with torch.inference_mode():
        out = backend.model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
            eos_token_id=backend.eos_ids, pad_token_id=backend.pad_id,
            return_dict_in_generate=keep_logits, output_logits=keep_logits)
    rows = (out.sequences if keep_logits else out)[:, input_ids.shape[1]:].tolist()
    answers = {}
    for example, row in zip(batch, rows, strict=True):
        end = next((i for i, t in enumerate(row) if t in backend.eos_ids), len(row))
        answers[example.key] = {"text": backend._decode(row[:end]), "tokens": end}
    return answers


def evaluation_batch(backend: Any, batch: list[Any], cfg: Any,
                     quick: bool) -> dict[str, Any]:
    """The evaluator on one batch (evaluate_with_backend: every figure, as in a full pass)."""
    from evaluators.data import Suite
    from evaluators.evaluate import evaluate_with_backend

    result = evaluate_with_backend(backend, Suite(batch, ["bench"]), cfg,
                                   checkpoint="bench", step=None, show_progress=False,
                                   quick=quick)
    return {o.key: {"text": o.generated, "tokens": o.generated_tokens, "nll": o.nll,
                    "golden_tokens": o.golden_tokens, "confident": o.confidence is not None}
            for o in result.outcomes}


def run_batch(path: str, setup: Setup, batch: list[Any]) -> dict[str, Any]:
    """One path on one batch: per example its answer (and the evaluator's figures)."""
    if path in ("plain", MEMORY_PATH):
        return plain_batch(setup.full, batch, setup.cfg.max_new_tokens, path == MEMORY_PATH)
    backend = setup.quick if path == "quick" else setup.full
    return evaluation_batch(backend, batch, setup.cfg, path == "quick")


class WorkCounter:
    """Forward passes of the model and rows through its output layer (the 151,936-wide
    matrix that dominates a step): the work each path does, counted rather than timed."""

    def __init__(self, model: Any) -> None:
        self.forwards = 0
        self.rows = 0
        self.handles = [
            model.register_forward_pre_hook(self._forward),
            model.get_output_embeddings().register_forward_pre_hook(self._rows)]

    def _forward(self, _module: Any, _args: Any) -> None:
        self.forwards += 1

    def _rows(self, _module: Any, args: Any) -> None:
        self.rows += args[0].numel() // args[0].shape[-1]

    def count(self, path: str, setup: Setup) -> dict[str, int]:
        """The work of one untimed pass of `path` over every batch."""
        self.forwards = self.rows = 0
        for batch in setup.batches:
            run_batch(path, setup, batch)
        return {"forward_passes": self.forwards, "output_layer_rows": self.rows}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def timing(args: argparse.Namespace, model: Path, data: Path) -> dict[str, Any]:
    """The three paths batch by batch in a rotating order, --rounds times: per path, round
    and batch the wall and CPU seconds; the answers of every round. First, untimed, the
    work each path does (which also warms every batch shape up)."""
    setup = Setup.load(args, model, data)
    counter = WorkCounter(setup.full.model)
    work = {path: counter.count(path, setup) for path in PATHS}
    counter.close()
    runs: dict[str, dict[str, list[Any]]] = {
        path: {"wall": [], "cpu": [], "answers": []} for path in PATHS}
    for round_no in range(args.rounds):
        for path in PATHS:
            runs[path]["wall"].append([])
            runs[path]["cpu"].append([])
            runs[path]["answers"].append({})
        for index, batch in enumerate(setup.batches):
            turn = (round_no + index) % len(PATHS)
            for path in PATHS[turn:] + PATHS[:turn]:
                wall, cpu = time.perf_counter(), time.process_time()
                answers = run_batch(path, setup, batch)
                runs[path]["wall"][-1].append(time.perf_counter() - wall)
                runs[path]["cpu"][-1].append(time.process_time() - cpu)
                runs[path]["answers"][-1].update(answers)
    return {"examples": sum(len(b) for b in setup.batches), "runs": runs, "work": work}


def memory(path: str, args: argparse.Namespace, model: Path, data: Path) -> dict[str, Any]:
    """One path over the first MEMORY_BATCHES batches: its RSS peak and the RSS before."""
    setup = Setup.load(args, model, data)
    run_batch(path, setup, setup.batches[0][:1])
    before = status_bytes("VmRSS")
    reset_peak()
    for batch in setup.batches[:MEMORY_BATCHES]:
        run_batch(path, setup, batch)
    return {"path": path, "peak_rss_bytes": status_bytes("VmHWM"),
            "rss_before_bytes": before}


def run_child(job: str, args: argparse.Namespace, model: Path, data: Path) -> dict[str, Any]:
    """`timing`, or one path's memory, in a fresh interpreter (--smoke: in this one)."""
    if args.smoke:
        return timing(args, model, data) if job == "timing" else memory(job, args, model, data)
    command = [sys.executable, __file__, "--child", job, "--model", str(model),
               "--data", str(data), "--batch-size", str(args.batch_size),
               "--max-new-tokens", str(args.max_new_tokens), "--limit", str(args.limit),
               "--rounds", str(args.rounds)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES)}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{job} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the report


def path_figures(run: dict[str, list[Any]], examples: int) -> dict[str, Any]:
    """A path's rates: from the sum over batches of each batch's fastest round (wall and
    CPU), and each round's own."""
    best = sum(min(times) for times in zip(*run["wall"], strict=True))
    best_cpu = sum(min(times) for times in zip(*run["cpu"], strict=True))
    tokens = sum(a["tokens"] for a in run["answers"][0].values())
    return {"examples_per_second": examples / best,
            "generated_tokens_per_second": tokens / best,
            "examples_per_cpu_second": examples / best_cpu,
            "generated_tokens": tokens, "seconds": best,
            "rounds_examples_per_second": [examples / sum(r) for r in run["wall"]]}


def evaluator_checks(runs: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """What the evaluator paths computed: pooled cross-entropy (full), none (quick), and
    how many answers have a confidence."""
    full = runs["full"]["answers"][0].values()
    quick = runs["quick"]["answers"][0].values()
    return {
        "full_cross_entropy": sum(a["nll"] for a in full) / sum(a["golden_tokens"] for a in full),
        "quick_cross_entropy_absent": all(a["nll"] is None for a in quick),
        "full_with_confidence": sum(a["confident"] for a in full),
        "quick_with_confidence": sum(a["confident"] for a in quick),
    }


def answers_agree(runs: dict[str, dict[str, list[Any]]]) -> list[str]:
    """Keys whose answer differs between any two paths or rounds (empty: identical)."""
    reference = {k: a["text"] for k, a in runs["plain"]["answers"][0].items()}
    differing = {key for run in runs.values() for answers in run["answers"]
                 for key, found in answers.items() if found["text"] != reference.get(key)}
    return sorted(differing)


def report(timed: dict[str, Any], memories: list[dict[str, Any]], args: argparse.Namespace,
           shape: Shape) -> dict[str, Any]:
    """The paths side by side, their ratios to the plain loop and the agreement check."""
    examples = timed["examples"]
    paths = {path: {**path_figures(run, examples), **timed["work"][path]}
             for path, run in timed["runs"].items()}
    for found in memories:
        paths.setdefault(found["path"], {}).update(found)
    plain = paths["plain"]
    differing = answers_agree(timed["runs"])
    return {
        "model": {"vocab_size": QWEN3_VOCAB, **dataclasses.asdict(shape)},
        "examples": examples, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "rounds": args.rounds,
        "threads": args.threads or os.cpu_count(),
        "memory_measure": f"RSS high-water mark over {MEMORY_BATCHES} batches (VmHWM, reset"
                          " before them), glibc mmap threshold 1 MiB",
        "paths": paths, **evaluator_checks(timed["runs"]),
        "full_speed_ratio": paths["full"]["examples_per_second"] / plain["examples_per_second"],
        "quick_speed_ratio": paths["quick"]["examples_per_second"]
        / plain["examples_per_second"],
        "full_cpu_ratio": paths["full"]["examples_per_cpu_second"]
        / plain["examples_per_cpu_second"],
        "quick_cpu_ratio": paths["quick"]["examples_per_cpu_second"]
        / plain["examples_per_cpu_second"],
        "full_memory_ratio": paths["full"]["peak_rss_bytes"] / plain["peak_rss_bytes"],
        "full_work_ratio": paths["full"]["output_layer_rows"] / plain["output_layer_rows"],
        "targets": TARGETS,
        "answers_identical": not differing, "answers_differing": differing[:10],
    }


def as_text(fig: dict[str, Any]) -> str:
    mib = 1024 * 1024
    model = fig["model"]
    lines = [
        f"evaluator on a realistic shape: vocabulary {model['vocab_size']:,}, hidden"
        f" {model['hidden']}, {model['layers']} layers, random weights;"
        f" {fig['examples']} examples, batch {fig['batch_size']},"
        f" max_new_tokens {fig['max_new_tokens']}, fastest of {fig['rounds']} rounds per batch,"
        f" {fig['threads']} thread(s)",
    ]
    for name, path in fig["paths"].items():
        speed = "" if "examples_per_second" not in path else (
            f"{path['examples_per_second']:7.2f} examples/s"
            f" {path['generated_tokens_per_second']:8.1f} generated tokens/s"
            f" (rounds {', '.join(f'{r:.2f}' for r in path['rounds_examples_per_second'])})")
        lines.append(
            f"  {name:<6} peak RSS {path['peak_rss_bytes'] / mib:6.0f} MiB"
            f" (+{(path['peak_rss_bytes'] - path['rss_before_bytes']) / mib:4.0f})  {speed}")
    lines.append(
        f"  work: output-layer rows full {fig['full_work_ratio']:.3f}x plain; forward passes"
        f" plain {fig['paths']['plain']['forward_passes']},"
        f" full {fig['paths']['full']['forward_passes']},"
        f" quick {fig['paths']['quick']['forward_passes']}")
    lines.append(
        f"  per CPU second: full {fig['full_cpu_ratio']:.3f}x plain,"
        f" quick {fig['quick_cpu_ratio']:.3f}x; cross-entropy {fig['full_cross_entropy']:.3f}"
        f" (quick: absent {fig['quick_cross_entropy_absent']})")
    lines.append(
        f"  full {fig['full_speed_ratio']:.3f}x plain (target >= {TARGETS['full_speed']}),"
        f" quick {fig['quick_speed_ratio']:.3f}x (>= {TARGETS['quick_speed']}),"
        f" full peak RSS {fig['full_memory_ratio']:.3f}x plain (<= {TARGETS['full_memory']});"
        f" answers identical: {fig['answers_identical']}")
    return "\n".join(lines) + "\n"


def missed_targets(fig: dict[str, Any]) -> list[str]:
    """The targets the figures miss, worded for the log."""
    missed = []
    if fig["full_speed_ratio"] < TARGETS["full_speed"]:
        missed.append(f"full evaluation at {fig['full_speed_ratio']:.3f}x the plain loop")
    if fig["quick_speed_ratio"] < TARGETS["quick_speed"]:
        missed.append(f"quick mode at {fig['quick_speed_ratio']:.3f}x the plain loop")
    if fig["full_memory_ratio"] > TARGETS["full_memory"]:
        missed.append(f"full evaluation's peak RSS {fig['full_memory_ratio']:.3f}x plain's")
    return missed


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a small model (vocabulary still 151,936), 8 examples, 1 round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"default {NEW_TOKENS} (smoke: 4)")
    parser.add_argument("--limit", type=int, default=None, help="examples (default 32)")
    parser.add_argument("--rounds", type=int, default=None, help="default 4 (smoke: 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core); 1 is steadier"
                             " on a machine other jobs share")
    parser.add_argument("--no-logits-path", action="store_true",
                        help="skip the output_logits memory run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.max_new_tokens is None:
        args.max_new_tokens = 4 if args.smoke else NEW_TOKENS
    if args.limit is None:
        args.limit = 8 if args.smoke else 32
    if args.rounds is None:
        args.rounds = 1 if args.smoke else 4
    if args.smoke:
        args.batch_size = min(args.batch_size, 4)
        args.no_logits_path = True
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        model, data = Path(args.model), Path(args.data)
        found = (timing(args, model, data) if args.child == "timing"
                 else memory(args.child, args, model, data))
        sys.stdout.write(json.dumps(found) + "\n")
        return 0
    # Imported here: the children measure their own memory, without this.
    from common import write_figures

    from tunewatch.demo.tinymodel import write_suite

    shape = SMOKE_SHAPE if args.smoke else Shape()
    memory_paths = PATHS if args.no_logits_path else (*PATHS, MEMORY_PATH)
    with tempfile.TemporaryDirectory(prefix="bench-eval-realistic-") as tmp:
        model = build_checkpoint(Path(tmp) / "model", shape)
        data = Path(tmp) / "data"
        write_suite(data, SUITE_PER_DIFFICULTY)
        timed = run_child("timing", args, model, data)
        memories = [run_child(path, args, model, data) for path in memory_paths]
    figures = report(timed, memories, args, shape)
    write_figures(figures, args.json, as_text, indent=2)
    if not figures["answers_identical"]:
        log.error("answers differ between paths or rounds: %s", figures["answers_differing"])
        return 1
    missed = missed_targets(figures)
    if missed and not args.smoke:
        log.error("targets missed: %s", "; ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
