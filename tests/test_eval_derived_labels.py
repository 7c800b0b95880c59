"""Pattern, regime and source of messages-only suites, derived from file names and ids.

Why on the seeds' own names: the seeds' files carry only `messages` (their labels live in
the names: `easy_50.jsonl`, `syllo_validation_20.jsonl`, `hard_examples_20251122.jsonl`,
ids like `syllo_001234`), so every breakdown of such a suite was one `unspecified` row.
The names below are copied from ../shared/seeds/ (000, 001, 004).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluators.data import UNSPECIFIED, load_suite
from evaluators.errors import EvaluationError
from tunewatch.core.config import ConfigError, load_config
from tunewatch.core.config.sections import DerivedLabel

# File names and ids as the seeds write them.
SEED_FILES = ("easy_50.jsonl", "syllo_validation_20.jsonl", "syllo_batch_042.jsonl",
              "hard_examples_20251122.jsonl", "corrections_20251122.jsonl")
SEED_IDS = ("syllo_001234", "math_000017", "logic_000003")
# The derivation docs/evaluation.md shows for these names.
PATTERN_FROM_ID = DerivedLabel(take="id", regex=r"^(?P<value>[a-z]+)_[0-9]+$")
SOURCE_FROM_FILE = DerivedLabel(take="file", regex=r"^(?P<value>[a-z_]+?)_[0-9]{8}$")


def messages(question: str, answer: str, **fields: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question},
                                    {"role": "assistant", "content": answer}], **fields})


def write_seed_suite(root: Path) -> None:
    """Every seed file with messages-only records (seed ids on the first file)."""
    for n, name in enumerate(SEED_FILES):
        lines = [messages(f"{name} q{i}", f"a{i}",
                          **({"id": SEED_IDS[i]} if n == 0 else {}))
                 for i in range(len(SEED_IDS))]
        (root / name).write_text("\n".join(lines) + "\n")


def labels_by_file(root: Path, **derive: DerivedLabel) -> dict[str, set[tuple[str, str, str]]]:
    suite = load_suite(root, None, derive)
    out: dict[str, set[tuple[str, str, str]]] = {}
    for e in suite.examples:
        out.setdefault(e.origin.split(":")[0], set()).add((e.pattern, e.regime, e.source))
    return out


def test_without_configuration_messages_only_records_stay_unspecified(tmp_path: Path):
    write_seed_suite(tmp_path)
    for found in labels_by_file(tmp_path).values():
        assert found == {(UNSPECIFIED, UNSPECIFIED, UNSPECIFIED)}


def test_pattern_from_the_seeds_ids(tmp_path: Path):
    write_seed_suite(tmp_path)
    suite = load_suite(tmp_path, None, {"pattern": PATTERN_FROM_ID})
    by_id = {e.id: e.pattern for e in suite.examples if e.origin.startswith("easy_50")}
    assert by_id == {"syllo_001234": "syllo", "math_000017": "math", "logic_000003": "logic"}
    # Records without an id have `file:line` as their id, which the regex does not match.
    others = {e.pattern for e in suite.examples if not e.origin.startswith("easy_50")}
    assert others == {UNSPECIFIED}


def test_source_from_the_seeds_dated_file_names(tmp_path: Path):
    write_seed_suite(tmp_path)
    found = labels_by_file(tmp_path, source=SOURCE_FROM_FILE)
    sources = {name: {s for _p, _r, s in labels} for name, labels in found.items()}
    assert sources == {
        "hard_examples_20251122.jsonl": {"hard_examples"},
        "corrections_20251122.jsonl": {"corrections"},
        # no eight-digit date: the regex does not match, the label stays unspecified
        "easy_50.jsonl": {UNSPECIFIED}, "syllo_validation_20.jsonl": {UNSPECIFIED},
        "syllo_batch_042.jsonl": {UNSPECIFIED},
    }


def test_group_rules_and_the_whole_name(tmp_path: Path):
    """The `value` group, else group 1, else the whole match; no regex: the whole stem."""
    write_seed_suite(tmp_path)
    found = labels_by_file(
        tmp_path,
        pattern=DerivedLabel(take="file", regex=r"^([a-z]+)_"),       # group 1
        regime=DerivedLabel(take="file", regex=r"[a-z]+_[0-9]+"),     # whole match
        source=DerivedLabel(take="file"))                             # whole stem
    assert found["syllo_batch_042.jsonl"] == {("syllo", "batch_042", "syllo_batch_042")}
    assert found["easy_50.jsonl"] == {("easy", "easy_50", "easy_50")}
    assert found["syllo_validation_20.jsonl"] == {("syllo", "validation_20",
                                                   "syllo_validation_20")}


def test_a_records_own_field_wins(tmp_path: Path):
    (tmp_path / "syllo_batch_042.jsonl").write_text(
        messages("q", "a", pattern="counting", id="syllo_000001") + "\n"
        + messages("q2", "a2", id="syllo_000002") + "\n")
    suite = load_suite(tmp_path, None, {"pattern": PATTERN_FROM_ID})
    assert sorted(e.pattern for e in suite.examples) == ["counting", "syllo"]


def test_a_bad_rule_is_refused_by_the_loader_and_the_suite(tmp_path: Path):
    for bad in ('pattern: {take: id, regex: "(unclosed"}', 'difficulty: {take: file}'):
        cfg = tmp_path / "tunewatch.yml"
        cfg.write_text(f"evaluator:\n  derive_labels:\n    {bad}\n")
        with pytest.raises(ConfigError, match=r"evaluator\.derive_labels"):
            load_config(cfg, environ={})
    write_seed_suite(tmp_path)
    with pytest.raises(EvaluationError, match=r"derive_labels\.pattern\.regex"):
        load_suite(tmp_path, None, {"pattern": DerivedLabel(regex="(unclosed")})


def test_configured_rules_load(tmp_path: Path):
    cfg = tmp_path / "tunewatch.yml"
    cfg.write_text("evaluator:\n  max_patterns: 3\n  derive_labels:\n"
                   '    pattern: {take: id, regex: "^(?P<value>[a-z]+)_[0-9]+$"}\n')
    ev = load_config(cfg, environ={}).evaluator
    assert ev.derive_labels == {"pattern": PATTERN_FROM_ID} and ev.max_patterns == 3
