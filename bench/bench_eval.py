"""Benchmark: eval-once's batched one-pass path against the seeds' one-at-a-time loop.

Why: the seeds' daemons called `model.generate` once per example; the evaluation core batches
(sorted by length, left padding) and computes every figure in the same pass. This measures
both on the same tiny checkpoint and suite, in one run, and checks they agree on exact match:
a speed-up that changed the answers would be worthless.

Each path runs in its own child process so that its peak RSS is its own. Timing covers the
evaluation loop (after one warm-up example), not the model load, which both paths share.

    python bench/bench_eval.py            # full suite (150 examples), default batch size
    python bench/bench_eval.py --smoke    # small and quick (a test runs this)
    python bench/bench_eval.py --checkpoint DIR --data DIR --json

Exit status 1 when exact match differs, or (full run only) the speed-up is below --target.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("bench_eval")


def naive_loop(checkpoint: Path, examples: list[Any], max_new_tokens: int) -> tuple[int, float]:
    """The seeds' way: load, then generate and decode one example at a time; (hits, seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()

    def answer(example: Any) -> str:
        messages = [{"role": m.role, "content": m.content} for m in example.prompt]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    answer(examples[0])
    start = time.perf_counter()
    hits = sum(answer(e).strip() == e.golden.strip() for e in examples)
    return hits, time.perf_counter() - start


def batched_path(checkpoint: Path, examples: list[Any], batch_size: int,
                 max_new_tokens: int) -> tuple[int, float]:
    """eval-once's path: LocalBackend + the one-pass evaluation (CE, confidence, stats too)."""
    import dataclasses

    from evaluators.backends.local import LocalBackend
    from evaluators.data import Suite
    from evaluators.evaluate import evaluate_with_backend
    from tunewatch.core.config import EvaluatorConfig

    cfg = dataclasses.replace(EvaluatorConfig(), batch_size=batch_size, device="cpu",
                              max_new_tokens=max_new_tokens)
    backend, info = LocalBackend.load(checkpoint, device="cpu")
    warm = Suite(examples[:1], ["warm-up"])
    evaluate_with_backend(backend, warm, cfg, checkpoint=str(checkpoint), step=info.step,
                          show_progress=False)
    start = time.perf_counter()
    result = evaluate_with_backend(backend, Suite(examples, ["bench"]), cfg,
                                   checkpoint=str(checkpoint), step=info.step,
                                   show_progress=False)
    return result.overall.exact_match.successes, time.perf_counter() - start


def child(args: argparse.Namespace) -> int:
    """Run one path and print its figures as one JSON line."""
    from evaluators.data import load_suite, quick_subset

    examples = load_suite(Path(args.data)).examples
    if args.limit:
        examples = quick_subset(examples, args.limit)
    if args.child == "naive":
        hits, seconds = naive_loop(Path(args.checkpoint), examples, args.max_new_tokens)
    else:
        hits, seconds = batched_path(Path(args.checkpoint), examples, args.batch_size,
                                     args.max_new_tokens)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {"path": args.child, "examples": len(examples), "exact_match_hits": hits,
               "seconds": seconds, "examples_per_second": len(examples) / seconds,
               "peak_rss_bytes": peak_kib * 1024}
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


def run_child(path: str, args: argparse.Namespace, checkpoint: Path, data: Path) -> dict[str, Any]:
    """Run one path in a fresh interpreter, so that its peak RSS is its own."""
    command = [sys.executable, __file__, "--child", path, "--checkpoint", str(checkpoint),
               "--data", str(data), "--batch-size", str(args.batch_size),
               "--max-new-tokens", str(args.max_new_tokens), "--limit", str(args.limit or 0)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{path} path failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(
    naive: dict[str, Any], batched: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The figures of both paths side by side, with the ratio and the agreement check."""
    ratio = batched["examples_per_second"] / naive["examples_per_second"]
    return {
        "examples": batched["examples"], "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "naive_examples_per_second": naive["examples_per_second"],
        "batched_examples_per_second": batched["examples_per_second"],
        "speedup": ratio, "target": args.target,
        "exact_match_naive": naive["exact_match_hits"],
        "exact_match_batched": batched["exact_match_hits"],
        "exact_match_identical": naive["exact_match_hits"] == batched["exact_match_hits"],
        "naive_peak_rss_bytes": naive["peak_rss_bytes"],
        "batched_peak_rss_bytes": batched["peak_rss_bytes"],
    }


def as_text(fig: dict[str, Any]) -> str:
    mib = 1024 * 1024
    return (
        f"eval benchmark: {fig['examples']} examples, batch size {fig['batch_size']},"
        f" max_new_tokens {fig['max_new_tokens']}\n"
        f"  naive loop (one generate per example): {fig['naive_examples_per_second']:8.1f}"
        f" examples/s, peak RSS {fig['naive_peak_rss_bytes'] / mib:.0f} MiB,"
        f" exact match {fig['exact_match_naive']}\n"
        f"  eval-once path (batched, all figures):  {fig['batched_examples_per_second']:8.1f}"
        f" examples/s, peak RSS {fig['batched_peak_rss_bytes'] / mib:.0f} MiB,"
        f" exact match {fig['exact_match_batched']}\n"
        f"  speed-up {fig['speedup']:.1f}x (target {fig['target']:.0f}x);"
        f" exact match identical: {fig['exact_match_identical']}\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tunewatch.core.config import EvaluatorConfig

    defaults = EvaluatorConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small quick run (for tests)")
    parser.add_argument("--checkpoint", default=None, help="default: train the tiny model")
    parser.add_argument("--data", default=None, help="suite directory (with --checkpoint)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--limit", type=int, default=None, help="examples (smoke: 30)")
    parser.add_argument("--target", type=float, default=5.0, help="required speed-up")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", choices=["naive", "batched"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke and args.limit is None:
        args.limit = 30
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.child:
        return child(args)
    # Imported here: the children measure their own peak RSS, without this.
    from common import quick_checkpoint, write_figures

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        if args.checkpoint:
            checkpoint, data = Path(args.checkpoint), Path(args.data or ".")
        else:
            # Fewer steps for --smoke, which does not require the model to have learnt.
            checkpoint, data = quick_checkpoint(Path(tmp), 100 if args.smoke else 300,
                                                require_learning=not args.smoke)
        figures = report(run_child("naive", args, checkpoint, data),
                         run_child("batched", args, checkpoint, data), args)
    write_figures(figures, args.json, as_text, indent=2)
    if not figures["exact_match_identical"]:
        log.error("exact match differs between the naive and the batched path")
        return 1
    if not args.smoke and figures["speedup"] < args.target:
        log.error("speed-up %.1fx is below the target %.1fx", figures["speedup"], args.target)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
