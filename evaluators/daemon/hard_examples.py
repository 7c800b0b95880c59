"""The hard-example files: each evaluated checkpoint's wrong answers, as training data.

Why files: the next data round trains on what the model still gets wrong. Each wrong answer
is one JSONL row in the seeds' messages format (the prompt, then the golden answer as the
assistant's turn), with where it came from, appended to a file per UTC day under
`<state_dir>/hard_examples/`:

    {"messages": [...], "id": "...", "difficulty": "hard", "pattern": "...", ...,
     "step": 300, "checkpoint": "checkpoint-300", "generated": "<the wrong answer>"}

Idempotent across a kill: the daemon appends before it saves its state, so a kill between
the two re-evaluates the checkpoint after a restart; its rows are then found already
written and not appended twice, and a line cut short by the kill is removed first, so the
file stays valid JSONL.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from evaluators.data import Suite
from evaluators.evaluate import EvalResult
from evaluators.outcomes import ExampleOutcome

log = logging.getLogger("tunewatch.evaluate")

DIRECTORY = "hard_examples"  # under the evaluator's state directory


def holds_checkpoint(path: Path, checkpoint: str) -> bool:
    """Whether the hard-examples file already has rows of this checkpoint.

    A line cut short by a kill mid-append is removed first (the file is cut back to its
    last newline), so the file stays valid JSONL, usable as training data as it is.
    """
    if not path.exists():
        return False
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
        data = data[: data.rfind(b"\n") + 1]
    marker = json.dumps({"checkpoint": checkpoint})[1:-1].encode()
    return any(marker in line for line in data.splitlines())


def is_hard(outcome: ExampleOutcome) -> bool:
    """Whether an outcome goes to the hard-example file: a wrong answer. One rule for the
    file and for `tunewatch_eval_hard_examples` (evaluators/daemon/figures.py)."""
    return not outcome.exact_match


def rows(suite: Suite, result: EvalResult, step: int, checkpoint: str) -> list[str]:
    """The wrong answers of one evaluation, one JSON line each (without the newline)."""
    by_key = {e.key: e for e in suite.examples}
    lines = []
    for o in result.outcomes:
        example = by_key.get(o.key)
        if not is_hard(o) or example is None:
            continue
        messages = [{"role": m.role, "content": m.content} for m in example.prompt]
        messages.append({"role": "assistant", "content": example.golden})
        lines.append(json.dumps({
            "messages": messages, "id": o.id, "difficulty": o.difficulty,
            "pattern": o.pattern, "regime": o.regime, "source": o.source,
            "failure_mode": o.failure_mode, "step": step, "checkpoint": checkpoint,
            "generated": o.answer,
        }, ensure_ascii=False))
    return lines


def file_for(state_dir: Path, when: float) -> Path:
    """The file of the UTC day of `when` (unix seconds)."""
    day = time.strftime("%Y-%m-%d", time.gmtime(when))
    return state_dir / DIRECTORY / f"hard_examples_{day}.jsonl"


def write(state_dir: Path, suite: Suite, result: EvalResult, *, step: int, checkpoint: str,
          when: float) -> None:
    """Append the wrong answers of checkpoint `checkpoint`, unless they are there already.

    A failure to write is logged, never raised: the evaluation itself has succeeded.
    """
    path = file_for(state_dir, when)
    lines = rows(suite, result, step, checkpoint)
    if not lines:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if holds_checkpoint(path, checkpoint):
            # Killed after appending but before saving the state: already written.
            log.info("hard examples of %s already in %s", checkpoint, path)
            return
        with path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    except OSError as exc:
        log.error("cannot append hard examples to %s: %s", path, exc)
