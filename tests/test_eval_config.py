"""The evaluator's configuration keys are checked at start, each error naming the key."""

from __future__ import annotations

import pytest

from tunewatch.core.config import ConfigError, load_config


def write(tmp_path, text: str):
    path = tmp_path / "tunewatch.yml"
    path.write_text(text)
    return path


def test_defaults_are_the_seeds_and_design_values():
    ev = load_config(None, environ={}).evaluator
    assert ev.calibration_bins == [0.0, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0]
    assert ev.length_buckets == [0, 50, 100, 200]
    assert ev.no_chat_template == "error" and ev.think == "strip"


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("evaluator:\n  normalize_regexes: ['(unclosed']\n", "evaluator.normalize_regexes"),
        ("evaluator:\n  stop_strings: ['']\n", "evaluator.stop_strings"),
        ("evaluator:\n  composite_weights: {speed: 1.0}\n", "evaluator.composite_weights"),
        ("evaluator:\n  length_buckets: [10, 50]\n", "evaluator.length_buckets"),
        ("evaluator:\n  no_chat_template: guess\n", "evaluator.no_chat_template"),
        ("evaluator:\n  batch_size: 0\n", "evaluator.batch_size"),
        ("evaluator:\n  contracts: {emoji_think: {prefix: x}}\n",
         "evaluator.contracts.emoji_think.prefix"),
    ],
)
def test_bad_evaluator_values_name_their_key(tmp_path, yaml_text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, yaml_text), environ={})


def test_contracts_load_per_regime(tmp_path):
    cfg = load_config(write(tmp_path, "evaluator:\n  contracts:\n    emoji_think:\n"
                            "      required_prefix: '#'\n      stop_marker: '!'\n"), environ={})
    contract = cfg.evaluator.contracts["emoji_think"]
    assert (contract.required_prefix, contract.stop_marker) == ("#", "!")
