import math

import pytest
import torch

from omnicoder.config import OmniCoderConfig, RopeScaling
from omnicoder.model import OmniCoder
from omnicoder.presets import gqa_test_config, mla_test_config
from omnicoder.rope import RotaryEmbedding, apply_rope, rope_frequencies
from omnicoder.torch_kv_cache import TorchKVCache


def cached_logits(model, ids, positions, chunks):
    cache, outs = TorchKVCache(model.config.n_layers), []
    for start, end in chunks:
        out = model(ids[:, start:end], positions[:, start:end], cache.past())
        cache.append(out.new_kv)
        outs.append(out.logits)
    return torch.cat(outs, dim=1), cache


@torch.no_grad()
def test_cached_decode_equals_full_forward(tiny_model):
    ids = torch.randint(0, 256, (2, 24))
    pos = torch.arange(24).expand(2, 24)
    full = tiny_model(ids, pos).logits
    chunks = [(0, 9)] + [(i, i + 1) for i in range(9, 16)] + [(16, 24)]
    stepped, cache = cached_logits(tiny_model, ids, pos, chunks)
    assert cache.length == 24
    assert (stepped - full).abs().max().item() <= 1e-5


@torch.no_grad()
def test_heads_have_expected_shapes(tiny_model):
    out = tiny_model(torch.zeros(1, 5, dtype=torch.long), torch.arange(5)[None])
    c = tiny_model.config
    assert out.mtp_logits.shape == (1, 5, c.n_mtp, c.vocab_size)
    assert out.retention.shape == (1, 5, 3)
    key, value = out.new_kv[0]
    assert key.shape == (1, c.kv_heads, 5, c.kv_key_dim) and value.shape == (1, c.kv_heads, 5, c.kv_value_dim)


@torch.no_grad()
def test_mla_absorbed_equals_naive():
    torch.manual_seed(1)
    model = OmniCoder(mla_test_config()).eval()
    ids, pos = torch.randint(0, 256, (2, 17)), torch.arange(17).expand(2, 17)
    absorbed = model(ids, pos).logits
    model.set_mla_absorbed(False)
    naive = model(ids, pos).logits
    assert (absorbed - naive).abs().max().item() <= 1e-5
    # and with a cache: the naive form decodes from the same latent cache
    stepped, _ = cached_logits(model, ids, pos, [(0, 10), (10, 11), (11, 17)])
    assert (stepped - absorbed).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@torch.no_grad()
def test_gqa_mha_and_mqa(kv_heads):
    torch.manual_seed(2)
    config = OmniCoderConfig(**{**gqa_test_config().to_dict(), "n_kv_heads": kv_heads, "qk_norm": True})
    model = OmniCoder(config).eval()
    ids, pos = torch.randint(0, 256, (1, 12)), torch.arange(12)[None]
    stepped, _ = cached_logits(model, ids, pos, [(0, 5)] + [(i, i + 1) for i in range(5, 12)])
    assert (stepped - model(ids, pos).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("make", [gqa_test_config, mla_test_config])
@torch.no_grad()
def test_sliding_window_cached_equals_full(make):
    torch.manual_seed(3)
    model = OmniCoder(OmniCoderConfig(**{**make().to_dict(), "sliding_window": 6})).eval()
    ids, pos = torch.randint(0, 256, (1, 20)), torch.arange(20)[None]
    stepped, _ = cached_logits(model, ids, pos, [(0, 8)] + [(i, i + 1) for i in range(8, 20)])
    assert (stepped - model(ids, pos).logits).abs().max().item() <= 1e-5


@torch.no_grad()
def test_non_contiguous_positions(tiny_model):
    """A cache that skipped positions (evicted tokens) decodes exactly like a full pass over the kept tokens."""
    ids = torch.randint(0, 256, (1, 8))
    pos = torch.tensor([[0, 1, 2, 9, 10, 31, 32, 40]])
    full = tiny_model(ids, pos).logits
    stepped, _ = cached_logits(tiny_model, ids, pos, [(0, 3)] + [(i, i + 1) for i in range(3, 8)])
    assert (stepped - full).abs().max().item() <= 1e-5
    # RoPE is relative: shifting every position by a constant leaves the logits unchanged
    shifted = tiny_model(ids, pos + 37).logits
    assert (shifted - full).abs().max().item() <= 1e-4
    # and the positions matter: contiguous positions give other logits
    assert (tiny_model(ids, torch.arange(8)[None]).logits - full).abs().max().item() > 1e-3


def reference_rope(x, positions, inv_freq, mscale=1.0):
    """Rotation of pairs (x_i, x_{i+half}) by angle p * inv_freq_i, via complex numbers."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    angle = positions.double()[:, None, :, None] * inv_freq.double()
    z = z * torch.polar(torch.full_like(angle, mscale), angle)
    return torch.cat((z.real, z.imag), dim=-1).float()


@pytest.mark.parametrize(
    "scaling",
    [RopeScaling(), RopeScaling("linear", 4.0), RopeScaling("yarn", 4.0, 128), RopeScaling("llama3", 8.0, 128)],
)
def test_apply_rope_matches_complex_rotation(scaling):
    rope = RotaryEmbedding(16, 10000.0, scaling)
    x = torch.randn(2, 3, 5, 16)
    pos = torch.tensor([[0, 3, 4, 100, 513], [7, 8, 9, 10, 11]])
    got = apply_rope(x, *rope(pos))
    assert torch.allclose(got, reference_rope(x, pos, rope.inv_freq, rope.mscale), atol=1e-4)


def test_rope_scaling_frequencies():
    base = rope_frequencies(10000.0, 64, RopeScaling())[0]
    linear, m_lin = rope_frequencies(10000.0, 64, RopeScaling("linear", 4.0))
    assert torch.allclose(linear, base / 4) and m_lin == 1.0
    yarn, m_yarn = rope_frequencies(10000.0, 64, RopeScaling("yarn", 4.0, 512))
    assert math.isclose(m_yarn, 0.1 * math.log(4.0) + 1)
    assert torch.allclose(yarn[:4], base[:4])  # fast rotations are extrapolated (kept)
    assert torch.allclose(yarn[-4:], base[-4:] / 4)  # slow rotations are interpolated
    llama3, _ = rope_frequencies(500000.0, 64, RopeScaling("llama3", 8.0, 8192))
    plain = rope_frequencies(500000.0, 64, RopeScaling())[0]
    assert torch.allclose(llama3[:4], plain[:4]) and torch.allclose(llama3[-2:], plain[-2:] / 8)


def test_linear_scaling_equals_divided_positions():
    plain = RotaryEmbedding(16, 10000.0, RopeScaling())
    linear = RotaryEmbedding(16, 10000.0, RopeScaling("linear", 4.0))
    pos = torch.tensor([[0, 4, 8, 400]])
    cos_l, sin_l = linear(pos)
    cos_p, sin_p = plain(pos.float() / 4)
    assert torch.allclose(cos_l, cos_p, atol=1e-6) and torch.allclose(sin_l, sin_p, atol=1e-6)
