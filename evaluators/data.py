"""The validation suite: the seeds' JSONL messages format, read strictly but tolerantly.

Why strict per line and tolerant per file: one bad line must not cost a whole evaluation, but
it must never vanish either. Every skipped line is kept with its file:line and reason, logged,
counted and shown in the report; a suite with no valid example at all is an error, because an
evaluation over nothing would have to publish a made-up number.

A record: `{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}`,
optionally a system turn first and earlier turns; the last assistant turn is the golden answer
and every turn before it is the prompt. Optional string fields: id, difficulty, regime, source,
pattern. Without a `difficulty` field, the file name gives it: `easy_50.jsonl` -> easy.

Messages-only suites (the seeds' own files carry no pattern, regime or source) get those
labels from `evaluator.derive_labels`: per label, a regex over the file name or the id,
e.g. pattern from `syllo_001234` -> `syllo`. A record's own field always wins; a name the
regex does not match keeps `unspecified`, so one odd file never hides the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators.errors import EvaluationError
from tunewatch.core.config.sections import DerivedLabel

log = logging.getLogger(__name__)

UNSPECIFIED = "unspecified"
LABEL_FIELDS = ("difficulty", "regime", "source", "pattern")
DERIVABLE = ("regime", "source", "pattern")  # what evaluator.derive_labels may set
VALUE_GROUP = "value"  # the regex group that names the label, when the regex has it
ROLES = ("system", "user", "assistant")
_SIZE_SUFFIX = re.compile(r"_\d+$")


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str


@dataclass(frozen=True)
class Example:
    """One validation example; `key` identifies it across checkpoints for paired tests."""

    key: str
    id: str
    prompt: tuple[Message, ...]
    golden: str
    difficulty: str
    regime: str
    source: str
    pattern: str
    origin: str


@dataclass(frozen=True)
class SkippedLine:
    """A line that was not used, and why."""

    file: str
    line: int
    reason: str

    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Suite:
    """The examples of one evaluation, and what was left out on the way."""

    examples: list[Example]
    files: list[str] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)
    duplicates: int = 0


class LineError(ValueError):
    """Why a single line cannot be used."""


@dataclass(frozen=True)
class LabelRule:
    """One label read from a name: the file's stem or the example's id (see DerivedLabel)."""

    label: str
    take: str
    regex: re.Pattern[str] | None

    def value(self, path: Path, example_id: str) -> str | None:
        """The label this rule reads for one example, or None when the name does not match."""
        text = path.stem if self.take == "file" else example_id
        if self.regex is None:
            return text.strip() or None
        match = self.regex.search(text)
        if match is None:
            return None
        if VALUE_GROUP in self.regex.groupindex:
            found = match.group(VALUE_GROUP)
        else:
            found = match.group(1) if self.regex.groups else match.group(0)
        return found.strip() if found and found.strip() else None


def label_rules(derive: Mapping[str, DerivedLabel] | None) -> tuple[LabelRule, ...]:
    """The configured rules (evaluator.derive_labels), checked: a label that cannot be
    derived or a regex that does not compile is a `config` error naming it."""
    rules = []
    for label, rule in sorted((derive or {}).items()):
        if label not in DERIVABLE:
            raise EvaluationError("data", f"evaluator.derive_labels.{label}: only "
                                            f"{', '.join(DERIVABLE)} can be derived")
        try:
            regex = re.compile(rule.regex) if rule.regex else None
        except re.error as exc:
            raise EvaluationError("data", f"evaluator.derive_labels.{label}.regex: "
                                            f"{exc}") from exc
        rules.append(LabelRule(label, rule.take, regex))
    return tuple(rules)


def difficulty_from_name(path: Path) -> str:
    """`easy_50.jsonl` -> `easy`; a name without a size suffix is used whole."""
    stem = _SIZE_SUFFIX.sub("", path.stem)
    return stem or UNSPECIFIED


def example_key(prompt: tuple[Message, ...], golden: str) -> str:
    """A stable id from content: the same prompt and golden are the same example everywhere."""
    payload = json.dumps([[(m.role, m.content) for m in prompt], golden], ensure_ascii=True)
    return hashlib.sha256(payload.encode("ascii")).hexdigest()[:16]


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise LineError("'messages' must be a non-empty list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise LineError(f"messages[{i}] is not an object")
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise LineError(f"messages[{i}].role must be one of {list(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise LineError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        out.append(Message(role, content))
    return out


def _label(record: dict[str, Any], name: str, default: str) -> str:
    value = record.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        raise LineError(f"'{name}' must be a non-empty string, got {value!r}")
    return value.strip()


def parse_record(text: str, path: Path, line: int,
                 rules: Sequence[LabelRule] = ()) -> Example:
    """One JSONL line -> Example; raises LineError naming what is wrong. `rules` give the
    labels the record lacks (label_rules)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError(f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict):
        raise LineError(f"expected a JSON object, got {type(record).__name__}")
    messages = _messages(record.get("messages"))
    last_assistant = max(
        (i for i, m in enumerate(messages) if m.role == "assistant"), default=None
    )
    if last_assistant is None:
        raise LineError("no assistant turn (the golden answer)")
    prompt = tuple(messages[:last_assistant])
    if not any(m.role == "user" for m in prompt):
        raise LineError("no user turn before the assistant turn")
    golden = messages[last_assistant].content
    if not golden.strip():
        raise LineError("the assistant turn (golden answer) is empty")
    raw_id = record.get("id")
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
        raise LineError(f"'id' must be a string or an integer, got {raw_id!r}")
    origin = f"{path.name}:{line}"
    example_id = str(raw_id) if raw_id is not None else origin
    derived = {r.label: r.value(path, example_id) for r in rules}
    return Example(
        key=example_key(prompt, golden),
        id=example_id,
        prompt=prompt,
        golden=golden,
        difficulty=_label(record, "difficulty", difficulty_from_name(path)),
        regime=_label(record, "regime", derived.get("regime") or UNSPECIFIED),
        source=_label(record, "source", derived.get("source") or UNSPECIFIED),
        pattern=_label(record, "pattern", derived.get("pattern") or UNSPECIFIED),
        origin=origin,
    )


def read_file(path: Path, skipped: list[SkippedLine],
              rules: Sequence[LabelRule] = ()) -> list[Example]:
    """Every valid example of one file; bad lines are appended to `skipped` and logged."""
    examples = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            skipped.append(SkippedLine(path.name, number, f"not UTF-8 (byte {exc.start})"))
            continue
        if not text.strip():
            continue
        try:
            examples.append(parse_record(text, path, number, rules))
        except LineError as exc:
            skipped.append(SkippedLine(path.name, number, str(exc)))
    return examples


def suite_files(data_dir: Path, names: list[str]) -> list[Path]:
    """The configured files (relative to data_dir), or every *.jsonl there, sorted."""
    if not data_dir.is_dir():
        raise EvaluationError("data", f"data directory not found: {data_dir}")
    if names:
        paths = [data_dir / name for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise EvaluationError("data", f"suite file(s) not found: {', '.join(missing)}")
        return paths
    paths = sorted(p for p in data_dir.glob("*.jsonl") if p.is_file())
    if not paths:
        raise EvaluationError("data", f"no *.jsonl files in data directory {data_dir}")
    return paths


def load_suite(data_dir: Path, names: list[str] | None = None,
               derive: Mapping[str, DerivedLabel] | None = None) -> Suite:
    """Read the suite; duplicates (same prompt and golden) count once, with a warning.
    `derive`: evaluator.derive_labels, for records without pattern, regime or source."""
    rules = label_rules(derive)
    paths = suite_files(Path(data_dir), list(names or []))
    skipped: list[SkippedLine] = []
    seen: dict[str, Example] = {}
    duplicates = 0
    for path in paths:
        for example in read_file(path, skipped, rules):
            if example.key in seen:
                duplicates += 1
                continue
            seen[example.key] = example
    for item in skipped:
        log.warning("skipped %s: %s", item.where(), item.reason)
    if duplicates:
        log.warning("%d duplicate example(s) (same prompt and golden) counted once", duplicates)
    if not seen:
        raise EvaluationError(
            "data",
            f"empty suite: no valid example in {len(paths)} file(s) under {data_dir}"
            f" ({len(skipped)} line(s) skipped)",
        )
    return Suite(list(seen.values()), [p.name for p in paths], skipped, duplicates)


def quick_subset(examples: list[Example], limit: int) -> list[Example]:
    """The first `limit` examples taken round-robin over difficulties (the quick validation).

    Why round-robin: the files are sorted by name, so a plain head would test only `easy`.
    """
    if limit >= len(examples):
        return list(examples)
    by_difficulty: dict[str, list[Example]] = {}
    for example in examples:
        by_difficulty.setdefault(example.difficulty, []).append(example)
    queues = list(by_difficulty.values())
    picked: list[Example] = []
    depth = 0
    while len(picked) < limit:
        for queue in queues:
            if depth < len(queue) and len(picked) < limit:
                picked.append(queue[depth])
        depth += 1
    return picked
