"""The in-program KV cache (ExecuTorch buffers / Core ML states) equals the tensor-passing decode step."""

from __future__ import annotations

import pytest
import torch

from omnicoder.config import OmniCoderConfig
from omnicoder.model import OmniCoder
from omnicoder.presets import preset
from omnicoder.static_kv import StaticCacheDecoder


@pytest.mark.parametrize("name", ["test-gqa", "test-mla"])
def test_static_cache_matches_full_forward(name: str) -> None:
    torch.manual_seed(0)
    model = OmniCoder(preset(name)).eval()
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        full = model(ids, torch.arange(12)[None]).logits
        step = StaticCacheDecoder(model, max_seq_len=32)
        prefill = step(ids[:, :7], torch.arange(7))
        decoded = [step(ids[:, t : t + 1], torch.tensor([t])) for t in range(7, 12)]
    got = torch.cat([prefill, *decoded], dim=1)
    assert torch.allclose(got, full, atol=1e-5), (got - full).abs().max()


def test_static_cache_sliding_window() -> None:
    torch.manual_seed(0)
    config = OmniCoderConfig.from_dict({**preset("test-gqa").to_dict(), "sliding_window": 4})
    model = OmniCoder(config).eval()
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        full = model(ids, torch.arange(10)[None]).logits
        step = StaticCacheDecoder(model, max_seq_len=16)
        got = torch.cat([step(ids[:, t : t + 1], torch.tensor([t])) for t in range(10)], dim=1)
    assert torch.allclose(got, full, atol=1e-5)
