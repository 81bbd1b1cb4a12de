"""Shared fixtures: tiny random models of both attention kinds."""

from __future__ import annotations

import pytest
import torch

from omnicoder.model import OmniCoder
from omnicoder.presets import gqa_test_config, mla_test_config


@pytest.fixture(params=["gqa", "mla"])
def tiny_model(request) -> OmniCoder:
    torch.manual_seed(0)
    config = gqa_test_config() if request.param == "gqa" else mla_test_config()
    return OmniCoder(config).eval()
