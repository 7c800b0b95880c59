"""demo.device: where `make up`'s demo trains (a GPU when there is one, so that its MFU and
energy per token are live; the CPU otherwise; an impossible choice refused by name)."""

from __future__ import annotations

import pytest
import torch

from tunewatch.core.config import load_config
from tunewatch.core.errors import ConfigError, UsageError
from tunewatch.demo.trainer import demo_uses_cpu


def test_cpu_is_always_the_cpu():
    assert demo_uses_cpu("cpu") is True


def test_auto_takes_a_cuda_gpu_exactly_when_torch_sees_one():
    assert demo_uses_cpu("auto") is (not torch.cuda.is_available())


def test_cuda_without_a_gpu_is_refused_by_name():
    if torch.cuda.is_available():
        assert demo_uses_cpu("cuda") is False
        return
    with pytest.raises(UsageError, match=r"demo\.device"):
        demo_uses_cpu("cuda")


def test_the_setting_is_validated():
    assert load_config(None, environ={}).demo.device == "auto"
    cfg = load_config(None, environ={"TUNEWATCH_DEMO__DEVICE": "cpu"})
    assert cfg.demo.device == "cpu"
    with pytest.raises(ConfigError, match=r"demo\.device"):
        load_config(None, environ={"TUNEWATCH_DEMO__DEVICE": "tpu"})
