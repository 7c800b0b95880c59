"""Checkpoint directories: check them before loading, so a failure names its real cause.

Why check first: transformers, given a truncated safetensors file or a half-written
config.json, fails deep inside with messages that name neither the file nor the problem (or,
worse, initialises missing weights at random and carries on, which is how an evaluation ends
up publishing garbage). These checks are cheap (headers only) and each raises an
EvaluationError with a bounded reason and one line naming the file.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluators.errors import EvaluationError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_STEP = re.compile(r"checkpoint-(\d+)$")
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class CheckpointInfo:
    """What is known about a checkpoint before loading it."""

    path: Path
    step: int | None
    model_type: str
    weight_files: tuple[Path, ...]


def _read_json(path: Path, reason: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvaluationError(reason, f"{path}: not UTF-8 (byte {exc.start})") from exc
    except OSError as exc:
        raise EvaluationError(reason, f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvaluationError(
            reason, f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from exc


def check_config(directory: Path) -> str:
    """config.json must exist, parse and name a model_type; returns the model_type."""
    path = directory / "config.json"
    if not path.is_file():
        raise EvaluationError("config", f"no config.json in checkpoint {directory}")
    data = _read_json(path, "config")
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise EvaluationError("config", f"{path}: no 'model_type' (not a transformers config)")
    return data["model_type"]


def check_safetensors(path: Path) -> None:
    """The header must parse and the file must be as long as the header says.

    Layout: 8-byte little-endian header length N, N bytes of JSON mapping tensor names to
    dtype/shape/data_offsets, then the data; the largest end offset is the data length.
    """
    size = path.stat().st_size
    if size == 0:
        raise EvaluationError("weights", f"{path}: empty weights file (0 bytes)")
    if size < 8:
        raise EvaluationError("weights", f"{path}: truncated ({size} bytes, no header)")
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > min(_MAX_HEADER, size - 8):
            raise EvaluationError(
                "weights", f"{path}: truncated or corrupt (header of {length} bytes in {size})"
            )
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise EvaluationError("weights", f"{path}: corrupt safetensors header") from exc
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        raise EvaluationError(
            "weights", f"{path}: truncated ({size} bytes, the header needs {expected})"
        )


def _indexed_files(directory: Path, index: Path) -> list[Path]:
    data = _read_json(index, "weights")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise EvaluationError("weights", f"{index}: no 'weight_map'")
    files = sorted({directory / str(name) for name in weight_map.values()})
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise EvaluationError("weights", f"{index}: shard(s) missing: {', '.join(missing)}")
    return files


def check_weights(directory: Path) -> tuple[Path, ...]:
    """Find the weight files (single or sharded) and check every safetensors one."""
    files: list[Path] = []
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            files = [directory / name]
            break
    else:
        for name in INDEX_FILES:
            if (directory / name).is_file():
                files = _indexed_files(directory, directory / name)
                break
    if not files:
        looked = ", ".join(WEIGHT_FILES + INDEX_FILES)
        raise EvaluationError(
            "weights", f"no weights in checkpoint {directory} (looked for {looked})"
        )
    for path in files:
        if path.suffix == ".safetensors":
            check_safetensors(path)
        elif path.stat().st_size == 0:
            raise EvaluationError("weights", f"{path}: empty weights file (0 bytes)")
    return tuple(files)


def check_tokenizer_files(directory: Path) -> None:
    """A tokenizer must be saved with the checkpoint: the evaluation uses the run's own."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise EvaluationError(
            "tokenizer",
            f"no tokenizer in checkpoint {directory} (looked for {', '.join(TOKENIZER_FILES)})",
        )


def checkpoint_step(directory: Path) -> int | None:
    """The number in `checkpoint-<step>`, else global_step from trainer_state.json.

    Why the name first: it is what the evaluator daemon, the checkpoint rotation and the
    alerts know a checkpoint by, and the Trainer writes the two equal. A directory whose
    trainer_state.json says otherwise (copied or renamed by hand) is named in a warning, so
    `eval-once` and the daemon never report one checkpoint under two steps.
    """
    match = _STEP.search(directory.name)
    recorded = _global_step(directory / "trainer_state.json")
    if match is None:
        return recorded
    step = int(match.group(1))
    if recorded is not None and recorded != step:
        log.warning("%s: trainer_state.json says global_step %d; taking %d from the name",
                    directory, recorded, step)
    return step


def _global_step(state: Path) -> int | None:
    """global_step from a trainer_state.json, None when absent or unreadable."""
    if not state.is_file():
        return None
    try:
        step = json.loads(state.read_text(encoding="utf-8")).get("global_step")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        log.warning("%s: unreadable, so no global_step from it", state)
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def inspect_checkpoint(path: Path | str) -> CheckpointInfo:
    """Every check a local evaluation needs before it loads anything."""
    directory = Path(path)
    if not directory.exists():
        raise EvaluationError("checkpoint_missing", f"checkpoint directory not found: {directory}")
    if not directory.is_dir():
        raise EvaluationError("checkpoint_missing", f"checkpoint is not a directory: {directory}")
    model_type = check_config(directory)
    weights = check_weights(directory)
    check_tokenizer_files(directory)
    return CheckpointInfo(directory, checkpoint_step(directory), model_type, weights)
