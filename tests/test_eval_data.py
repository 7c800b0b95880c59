"""Reading the validation suite: the seeds' format, bad lines named and skipped, loud errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluators.data import load_suite, quick_subset
from evaluators.errors import EvaluationError


def record(question: str, answer: str, **extra: object) -> str:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages, **extra})


def write(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    path.write_bytes(data)
    return path


def test_difficulty_from_the_file_name_or_the_field(tmp_path):
    write(tmp_path / "easy_50.jsonl", [record("1+1", "2"), record("2+2", "4", difficulty="x")])
    write(tmp_path / "syllo_validation_20.jsonl", [record("a", "b")])
    suite = load_suite(tmp_path)
    assert [e.difficulty for e in suite.examples] == ["easy", "x", "syllo_validation"]
    assert suite.files == ["easy_50.jsonl", "syllo_validation_20.jsonl"]


def test_optional_fields_and_system_turn(tmp_path):
    line = json.dumps({
        "id": 17, "regime": "emoji_think", "source": "fixed_eval", "pattern": "syllogism",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "All men are mortal..."},
            {"role": "assistant", "content": "Socrates is mortal"},
        ],
    })
    write(tmp_path / "hard_10.jsonl", [line])
    (example,) = load_suite(tmp_path).examples
    assert (example.id, example.regime, example.source, example.pattern) == (
        "17", "emoji_think", "fixed_eval", "syllogism")
    assert [m.role for m in example.prompt] == ["system", "user"]
    assert example.golden == "Socrates is mortal"
    assert example.origin == "hard_10.jsonl:1"


BAD_LINES: list[tuple[str | bytes, str]] = [
    ('{"messages": [', "invalid JSON"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "not UTF-8"),
    ('["a list"]', "expected a JSON object"),
    ('{"messages": "hello"}', "'messages' must be a non-empty list"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "3"}]}',
     "content must be a string"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "role must be one of"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant turn"),
    ('{"messages": [{"role": "assistant", "content": "no question"}]}', "no user turn"),
    (record("q", "   "), "golden answer) is empty"),
    (record("q", "a", difficulty=3), "'difficulty' must be a non-empty string"),
    (record("q", "a", id=[1]), "'id' must be a string or an integer"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_a_bad_line_is_skipped_with_file_and_line(tmp_path, line, reason, caplog):
    write(tmp_path / "easy_5.jsonl", [record("1+1", "2"), line, record("2+2", "4")])
    suite = load_suite(tmp_path)
    assert len(suite.examples) == 2
    (skipped,) = suite.skipped
    assert skipped.where() == "easy_5.jsonl:2"
    assert reason in skipped.reason
    assert "easy_5.jsonl:2" in caplog.text


def test_blank_lines_are_not_errors(tmp_path):
    write(tmp_path / "easy_5.jsonl", [record("1+1", "2"), "", "   ", record("2+2", "4")])
    suite = load_suite(tmp_path)
    assert len(suite.examples) == 2 and not suite.skipped


def test_duplicates_count_once_with_a_warning(tmp_path, caplog):
    write(tmp_path / "easy_50.jsonl", [record("1+1", "2"), record("2+2", "4")])
    write(tmp_path / "easy_100.jsonl", [record("1+1", "2"), record("3+3", "6")])
    suite = load_suite(tmp_path)
    assert len(suite.examples) == 3 and suite.duplicates == 1
    assert "duplicate" in caplog.text
    assert len({e.key for e in suite.examples}) == 3


def test_configured_files_only(tmp_path):
    write(tmp_path / "easy_5.jsonl", [record("1+1", "2")])
    write(tmp_path / "hard_5.jsonl", [record("11+11", "22")])
    suite = load_suite(tmp_path, ["hard_5.jsonl"])
    assert [e.golden for e in suite.examples] == ["22"]
    with pytest.raises(EvaluationError, match="not found"):
        load_suite(tmp_path, ["medium_5.jsonl"])


def test_missing_data_directory_is_an_error(tmp_path):
    with pytest.raises(EvaluationError, match="data directory not found") as info:
        load_suite(tmp_path / "nope")
    assert info.value.reason == "data"


def test_empty_data_directory_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no suite here")
    with pytest.raises(EvaluationError, match=r"no \*\.jsonl files"):
        load_suite(tmp_path)


def test_a_suite_of_only_bad_lines_is_an_error(tmp_path):
    write(tmp_path / "easy_5.jsonl", ["not json", '{"messages": []}'])
    with pytest.raises(EvaluationError, match=r"empty suite.*2 line\(s\) skipped"):
        load_suite(tmp_path)


def test_quick_subset_spreads_over_difficulties(tmp_path):
    for name in ("easy", "hard", "medium"):
        write(tmp_path / f"{name}_5.jsonl", [record(f"{name}{i}", str(i)) for i in range(5)])
    suite = load_suite(tmp_path)
    picked = quick_subset(suite.examples, 7)
    assert [e.difficulty for e in picked] == ["easy", "hard", "medium"] * 2 + ["easy"]
    assert quick_subset(suite.examples, 100) == suite.examples
