"""Hard examples survive a kill between appending them and saving the state: no duplicate
rows on re-evaluation, and no half-written line left in the training data."""

from __future__ import annotations

import json
from pathlib import Path

from evaluators.daemon.hard_examples import holds_checkpoint


def row(checkpoint: str) -> str:
    return json.dumps({"messages": [], "step": 200, "checkpoint": checkpoint})


def test_rows_of_the_checkpoint_are_recognised(tmp_path: Path):
    path = tmp_path / "hard.jsonl"
    assert not holds_checkpoint(path, "checkpoint-200")
    path.write_text(row("checkpoint-2000") + "\n")
    assert not holds_checkpoint(path, "checkpoint-200")
    path.write_text(row("checkpoint-2000") + "\n" + row("checkpoint-200") + "\n")
    assert holds_checkpoint(path, "checkpoint-200")


def test_a_line_cut_by_a_kill_is_removed(tmp_path: Path):
    path = tmp_path / "hard.jsonl"
    whole = row("checkpoint-100") + "\n"
    path.write_text(whole + row("checkpoint-200")[:25])
    assert not holds_checkpoint(path, "checkpoint-200")
    assert path.read_text() == whole
    assert all(json.loads(line) for line in path.read_text().splitlines())
