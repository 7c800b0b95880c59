"""Benchmark: what the PrometheusCallback costs a training step.

Why: the callback runs inside the trainer's loop, so it must cost next to nothing. This
trains the tiny Qwen3 model with the real transformers Trainer, wraps the callback so that
every hook call the Trainer makes is timed (perf_counter_ns), scrapes /metrics meanwhile as
Prometheus would (every second, with its request headers: bench/common.py), and reports the
hooks' microseconds per step next to the step time.
Target: under 50 microseconds a step.

    python bench/bench_training.py             # 300 steps, target enforced
    python bench/bench_training.py --smoke     # 30 steps, figures only
    python bench/bench_training.py --json

Exit status 1 when the target is missed (full run only).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Scraper, bench_parser, write_figures

TARGET_US_PER_STEP = 50.0


def timed_callback(inner: Any) -> Any:
    """A TrainerCallback forwarding the events `inner` handles to it, timing each call.

    Events `inner` does not override stay TrainerCallback's no-ops, as they are without the
    wrapper (timing them would measure the wrapper, not the callback).
    """
    from transformers import TrainerCallback

    totals: dict[str, list[int]] = {}

    def make(event: str) -> Any:
        target = getattr(inner, event)

        def hook(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            result = target(args, state, control, **kwargs)
            row = totals.setdefault(event, [0, 0])
            row[0] += time.perf_counter_ns() - start
            row[1] += 1
            return result

        return hook

    events = [name for name in vars(type(inner)) if name.startswith("on_")]
    cls = type("TimedCallback", (TrainerCallback,), {e: make(e) for e in events})
    wrapper = cls()
    wrapper.totals = totals
    return wrapper


def as_text(figures: dict[str, Any]) -> str:
    lines = [f"training callback: {figures['hook_us_per_step']:.1f} us of hooks per step "
             f"(target < {TARGET_US_PER_STEP:.0f}), step time {figures['step_ms']:.1f} ms, "
             f"{figures['steps']} steps"]
    lines += [f"  {event:<24} {us:8.1f} us per call"
              for event, us in figures["per_event_us"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="30 steps, no target enforced")
    args = parser.parse_args(argv)
    steps = 30 if args.smoke else args.steps

    import torch

    from exporters.training import PrometheusCallback
    from tunewatch.demo import tinymodel

    torch.set_num_threads(1)
    spec = tinymodel.TinyModelSpec()
    pairs = tinymodel.training_pairs(spec.train_examples, 0)
    tokenizer = tinymodel.build_tokenizer(spec, pairs)
    model = tinymodel.build_model(spec, tokenizer, 0)
    callback = PrometheusCallback(listen_address="127.0.0.1:0", run="bench")
    server = callback.start_server()
    timed = timed_callback(callback)
    stop = threading.Event()

    def scraper() -> None:  # Prometheus at 1 s: the scrape shares the lock with the hooks
        with Scraper.for_url(server.url) as target:
            while not stop.wait(1.0):
                target.scrape()

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory() as out:
        trainer = tinymodel.train(model, tokenizer, pairs, Path(out), max_steps=steps,
                                  save_steps=steps, seed=0, spec=spec, callbacks=[timed])
    stop.set()
    callback.stop()
    runtime = float(trainer.state.log_history[-1].get("train_runtime", 0.0))
    hook_ns = sum(ns for ns, _ in timed.totals.values())
    figures = {
        "steps": steps,
        "hook_us_per_step": hook_ns / 1000 / steps,
        "step_ms": runtime * 1000 / steps,
        "per_event_us": {e: ns / 1000 / n for e, (ns, n) in sorted(timed.totals.items())},
        "target_us_per_step": TARGET_US_PER_STEP,
    }
    write_figures(figures, args.json, as_text, indent=2)
    if not args.smoke and figures["hook_us_per_step"] >= TARGET_US_PER_STEP:
        print("training callback: target missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
