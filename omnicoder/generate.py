"""Reference generation in PyTorch: the shared decode loop (`omnicoder.runtimes.decode_loop`) driving
the eager model with its KV cache."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from omnicoder.kv_cache import KVCache
from omnicoder.model import OmniCoder
from omnicoder.runtimes import decode_loop
from omnicoder.runtimes.sampling import Sampler
from omnicoder.runtimes.stats import GenerationStats
from omnicoder.tokenizer import Tokenizer


class TorchBackend:
    """Batch-1 decode steps through the eager model."""

    def __init__(self, model: OmniCoder) -> None:
        self.model = model.eval()
        self.context_length = model.config.max_seq_len
        self.cache = KVCache(model.config.n_layers)

    def reset(self) -> None:
        self.cache = KVCache(self.model.config.n_layers)

    @property
    def cache_length(self) -> int:
        return self.cache.length

    @torch.no_grad()
    def step(self, ids: list[int], positions: list[int]) -> np.ndarray:
        out = self.model(torch.tensor([ids]), torch.tensor([positions]), self.cache.past(), heads=False)
        self.cache.append(out.new_kv)
        return out.logits[0, -1].float().numpy()


def generate_ids(
    model: OmniCoder,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    eos_id: int,
    on_token: Callable[[int], None] | None = None,
) -> tuple[list[int], GenerationStats]:
    return decode_loop.generate_ids(TorchBackend(model), prompt_ids, max_new_tokens, sampler, eos_id, on_token)


def generate_text(
    model: OmniCoder,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    sampler: Sampler,
    on_text: Callable[[str], None] | None = None,
) -> tuple[str, GenerationStats]:
    return decode_loop.generate_text(TorchBackend(model), tokenizer, prompt, max_new_tokens, sampler, on_text)
