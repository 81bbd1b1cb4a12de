import numpy as np
import pytest
from omnicoder.runtimes.sampling import Sampler, SamplingParams

from omnicoder.errors import OmniCoderError

LOGITS = np.array([0.1, 2.0, 1.5, -1.0, 0.7, 1.9], dtype=np.float32)


def draws(params, n=200):
    sampler = Sampler(params)
    return [sampler.sample(LOGITS) for _ in range(n)]


def test_greedy_is_argmax():
    assert set(draws(SamplingParams(temperature=0.0), 5)) == {1}


def test_seed_makes_sampling_deterministic():
    params = SamplingParams(temperature=1.0, top_p=1.0, seed=7)
    assert draws(params) == draws(SamplingParams(temperature=1.0, top_p=1.0, seed=7))
    assert draws(params) != draws(SamplingParams(temperature=1.0, top_p=1.0, seed=8))


def test_top_k_limits_support():
    assert set(draws(SamplingParams(temperature=5.0, top_k=2, top_p=1.0))) == {1, 5}


def test_top_p_keeps_smallest_prefix():
    probs = Sampler(SamplingParams(temperature=1.0, top_p=0.5)).probabilities(LOGITS)
    kept = set(np.flatnonzero(probs))
    assert kept == {1, 5}  # 2.0 and 1.9 carry ~0.52 together; the top one alone is ~0.27
    assert np.isclose(probs.sum(), 1.0)


def test_temperature_matches_softmax():
    probs = Sampler(SamplingParams(temperature=2.0, top_p=1.0)).probabilities(LOGITS)
    expected = np.exp(LOGITS / 2.0) / np.exp(LOGITS / 2.0).sum()
    assert np.allclose(probs, expected, atol=1e-6)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=-0.1),
        SamplingParams(top_k=-1),
        SamplingParams(top_p=0.0),
        SamplingParams(top_p=1.5),
        SamplingParams(temperature=float("nan")),
    ],
)
def test_bad_parameters(params):
    with pytest.raises(OmniCoderError):
        Sampler(params)
