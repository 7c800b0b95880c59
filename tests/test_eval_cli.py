"""`tunewatch eval-once` end to end: reports, JSON, quick subsets, and every way to fail.

A fatal case must exit non-zero with one line naming the cause and no traceback; a tolerable
one (bad lines in the suite) must exit 0 and name what it skipped. Checkpoints are copies of
the real tiny checkpoint, damaged here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

KEEP = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", "trainer_state.json")


def eval_once(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "tunewatch", "eval-once", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=300,
    )


def copy_checkpoint(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in KEEP:
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    return target


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_tensor(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    del tensors["model.layers.1.self_attn.q_proj.weight"]
    save_file(tensors, path, metadata={"format": "pt"})


DAMAGE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "no_config": (lambda d: (d / "config.json").unlink(), "no config.json", "config"),
    "garbage_config": (lambda d: (d / "config.json").write_text("{model_type: qwen3,,"),
                       "config.json: not valid JSON", "config"),
    "config_not_transformers": (lambda d: (d / "config.json").write_text("[1, 2]"),
                                "no 'model_type'", "config"),
    "no_weights": (lambda d: (d / "model.safetensors").unlink(), "no weights", "weights"),
    "zero_byte_weights": (lambda d: (d / "model.safetensors").write_bytes(b""),
                          "empty weights file (0 bytes)", "weights"),
    "truncated_weights": (lambda d: _truncate(d / "model.safetensors"), "truncated", "weights"),
    "garbage_weights": (lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096)),
                        "model.safetensors", "weights"),
    "missing_tensor": (lambda d: _drop_tensor(d / "model.safetensors"),
                       "1 weight(s) missing", "weights"),
    "no_tokenizer": (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer", "tokenizer"),
    "no_chat_template": (lambda d: (d / "chat_template.jinja").unlink(), "no chat template",
                         "chat_template"),
}


def assert_one_line_failure(done: subprocess.CompletedProcess[str], needle: str, reason: str):
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert needle in lines[0] and f"[reason={reason}]" in lines[0], lines[0]
    assert " ERROR " in lines[0]
    assert done.stdout == ""


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_checkpoint_fails_in_one_line(tiny_run, tmp_path, case):
    damage, needle, reason = DAMAGE[case]
    checkpoint = copy_checkpoint(tiny_run.checkpoints[-1], tmp_path / "checkpoint-300")
    damage(checkpoint)
    done = eval_once(checkpoint, "--data", tiny_run.data_dir, cwd=tmp_path)
    assert_one_line_failure(done, needle, reason)


def test_no_checkpoint_directory(tiny_run, tmp_path):
    done = eval_once(tmp_path / "checkpoint-9", "--data", tiny_run.data_dir, cwd=tmp_path)
    assert_one_line_failure(done, "checkpoint directory not found", "checkpoint_missing")


def test_missing_data_directory(tiny_run, tmp_path):
    done = eval_once(tiny_run.checkpoints[-1], "--data", tmp_path / "nope", cwd=tmp_path)
    assert_one_line_failure(done, "data directory not found", "data")


def test_empty_data_directory(tiny_run, tmp_path):
    (tmp_path / "data").mkdir()
    done = eval_once(tiny_run.checkpoints[-1], "--data", tmp_path / "data", cwd=tmp_path)
    assert_one_line_failure(done, "no *.jsonl files", "data")


def test_usage_error_exits_2(tiny_run, tmp_path):
    done = eval_once(tiny_run.checkpoints[-1], "--batch-size", "0", cwd=tmp_path)
    assert done.returncode == 2 and "--batch-size must be at least 1" in done.stderr


def test_bad_lines_are_skipped_and_named(tiny_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_run.data_dir, data)
    easy = data / "easy_50.jsonl"
    first = easy.read_text().splitlines()[0]
    with easy.open("ab") as fh:
        fh.write(b'{"messages": [\n')
        fh.write(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
        fh.write(b'{"messages": [{"role": "user", "content": 7}, '
                 b'{"role": "assistant", "content": "7"}]}\n')
        fh.write(b'{"messages": [{"role": "user", "content": "What is 1+1?"}]}\n')
        fh.write(first.encode() + b"\n")
    done = eval_once(tiny_run.checkpoints[-1], "--data", data, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for line in (51, 52, 53, 54):
        assert f"easy_50.jsonl:{line}" in done.stdout
        assert f"easy_50.jsonl:{line}" in done.stderr
    assert "4 lines skipped" in done.stdout and "1 duplicates counted once" in done.stdout
    assert "Traceback" not in done.stderr


def test_report_and_json_agree(tiny_run, tmp_path):
    text = eval_once(tiny_run.checkpoints[-1], "--data", tiny_run.data_dir, cwd=tmp_path)
    raw = eval_once(tiny_run.checkpoints[-1], "--data", tiny_run.data_dir, "--json",
                    cwd=tmp_path)
    assert text.returncode == 0 and raw.returncode == 0, text.stderr + raw.stderr
    result = json.loads(raw.stdout)
    overall = result["overall"]
    assert result["step"] == 300 and overall["examples"] == 150
    assert len(result["outcomes"]) == 150
    assert set(result["breakdowns"]) == {"difficulty", "regime", "source", "pattern",
                                         "length_bucket", "pattern_length"}
    em = overall["exact_match"]
    assert f"({em['successes']}/150)" in text.stdout
    assert f"{100 * em['value']:.1f}%" in text.stdout
    assert f"{overall['cross_entropy']:.4f} nats/token" in text.stdout
    assert "by difficulty" in text.stdout and "calibration (overall)" in text.stdout


def test_limit_and_overrides(tiny_run, tmp_path):
    done = eval_once(tiny_run.checkpoints[-1], "--data", tiny_run.data_dir, "--json",
                     "--limit", "12", "--batch-size", "5", "--max-new-tokens", "3",
                     "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["suite"]["examples"] == 12 and result["suite"]["available"] == 150
    assert {k: v["examples"] for k, v in result["breakdowns"]["difficulty"].items()} == {
        "easy": 4, "hard": 4, "medium": 4}
    assert result["run"]["batch_size"] == 5 and result["run"]["max_new_tokens"] == 3


def test_a_checkpoint_is_known_by_the_step_in_its_name(tiny_run, tmp_path, caplog):
    """eval-once and the daemon name one checkpoint by one step: the directory's, which the
    daemon and the alerts use; trainer_state.json's global_step only for another name."""
    from evaluators.checkpoint import checkpoint_step
    from tunewatch.demo.tinymodel import blank_checkpoint

    source = tiny_run.checkpoints[-1]
    recorded = json.loads((source / "trainer_state.json").read_text())["global_step"]
    moved = copy_checkpoint(source, tmp_path / f"checkpoint-{recorded + 7}")
    with caplog.at_level("WARNING", logger="evaluators"):
        assert checkpoint_step(moved) == recorded + 7
    assert f"says global_step {recorded}; taking {recorded + 7} from the name" in caplog.text
    assert checkpoint_step(copy_checkpoint(source, tmp_path / "final")) == recorded
    assert checkpoint_step(tmp_path / "empty") is None
    # The demo's damaged copy (and the tests' blank one) records the step of its new name.
    copied = blank_checkpoint(source, tmp_path / f"checkpoint-{recorded + 1}")
    assert json.loads((copied / "trainer_state.json").read_text())["global_step"] == recorded + 1
    caplog.clear()
    assert checkpoint_step(copied) == recorded + 1 and not caplog.text


BLOCKED = """import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # import raises ModuleNotFoundError; find_spec finds nothing
from tunewatch.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("missing", "argv", "advice"), [
    ("torch", ["eval-once", "{ckpt}", "--data", "{data}"], "install the torch build"),
    ("torch", ["evaluate", "--once", "--checkpoints", "{ckpts}", "--data", "{data}"],
     "install the torch build"),
    ("requests", ["deploy", "status"], "pip install -c constraints.txt '.[eval]'"),
])
def test_a_host_installed_for_another_role_gets_one_line(tiny_run, tmp_path, missing, argv,
                                                         advice):
    """A command whose packages this host lacks (README, "Installing by role") names the
    package and what brings it, before any work, instead of a traceback per checkpoint."""
    values = {"ckpt": tiny_run.checkpoints[-1], "ckpts": tiny_run.checkpoints[-1].parent,
              "data": tiny_run.data_dir}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED, missing, *(a.format(**values) for a in argv)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"needs the Python package '{missing}', which is not installed" in done.stderr
    assert advice in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "var").exists()  # nothing evaluated, no state written
