"""Configuration: documented defaults, environment overrides, errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunewatch.config import ConfigError, load_config


def test_defaults_follow_the_design_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, environ={})
    assert cfg.exporter.listen_address == "127.0.0.1:9945"
    assert cfg.training.listen_address == "127.0.0.1:9946"
    assert cfg.evaluator.listen_address == "127.0.0.1:9947"
    assert cfg.source == "(defaults)"


def test_shipped_tunewatch_yml_is_valid(repo_root: Path):
    cfg = load_config(repo_root / "tunewatch.yml", environ={})
    assert cfg.source.endswith("tunewatch.yml")


def test_environment_overrides_file(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("run: from-file\nevaluator:\n  batch_size: 8\n")
    env = {"TUNEWATCH_RUN": "from-env", "TUNEWATCH_EVALUATOR__BATCH_SIZE": "4",
           "TUNEWATCH_STACK__PROMETHEUS_PORT": "19999"}
    cfg = load_config(path, environ=env)
    assert (cfg.run, cfg.evaluator.batch_size, cfg.stack.prometheus_port) == ("from-env", 4, 19999)


def test_unknown_key_is_named_with_file_and_line(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("run: x\nevaluator:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert f"{path}:3: key 'evaluator.batch_sise': unknown key" in str(err.value)


def test_wrong_type_and_range_are_named(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("evaluator:\n  max_new_tokens: many\n")
    expected = r":2: key 'evaluator.max_new_tokens': expected an integer"
    with pytest.raises(ConfigError, match=expected):
        load_config(path, environ={})
    path.write_text("evaluator:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"key 'evaluator.batch_size': must be at least 1"):
        load_config(path, environ={})


def test_bad_environment_value_is_named():
    with pytest.raises(ConfigError, match=r"key 'exporter.max_concurrent_scrapes': expected"):
        load_config(None, environ={"TUNEWATCH_EXPORTER__MAX_CONCURRENT_SCRAPES": "lots"})


def test_garbage_yaml_names_the_line(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("run: ok\nevaluator: [unclosed\n")
    with pytest.raises(ConfigError, match=r"tw.yml:\d+: invalid YAML"):
        load_config(path, environ={})


def test_cli_reports_a_bad_config_in_one_line_without_traceback(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("stack:\n  prometheus_port: nine\n")
    done = subprocess.run(
        [sys.executable, "-m", "tunewatch", "--config", str(path), "config"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert "key 'stack.prometheus_port'" in done.stderr
    assert "Traceback" not in done.stderr


def test_shipped_tunewatch_yml_documents_exactly_the_defaults(repo_root: Path):
    from tunewatch.config import Config, as_dict

    shipped = as_dict(load_config(repo_root / "tunewatch.yml", environ={}))
    assert shipped == as_dict(Config())
