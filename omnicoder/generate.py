"""Reference generation in PyTorch: a backend for the shared decode loop (`omnicoder.runtimes.decode_loop`)
that drives the eager model with its KV cache."""

from __future__ import annotations

import numpy as np
import torch

from omnicoder.model import OmniCoder
from omnicoder.torch_kv_cache import TorchKVCache


class TorchBackend:
    """Batch-1 decode steps through the eager model."""

    def __init__(self, model: OmniCoder) -> None:
        self.model = model.eval()
        self.context_length = model.config.max_seq_len
        self.cache = TorchKVCache(model.config.n_layers)
        self.n_mtp = model.config.n_mtp

    def reset(self) -> None:
        self.cache = TorchKVCache(self.model.config.n_layers)

    @property
    def cache_length(self) -> int:
        return self.cache.length

    @torch.no_grad()
    def step(self, ids: list[int], positions: list[int]) -> np.ndarray:
        out = self.model(torch.tensor([ids]), torch.tensor([positions]), self.cache.past(), heads=False)
        self.cache.append(out.new_kv)
        return out.logits[0, -1].float().numpy()

    @torch.no_grad()
    def verify(self, ids: list[int], positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Speculative decoding: logits [T, V] and MTP logits [T, n_mtp, V] of every token; caches them."""
        out = self.model(torch.tensor([ids]), torch.tensor([positions]), self.cache.past())
        self.cache.append(out.new_kv)
        mtp = out.mtp_logits[0] if out.mtp_logits is not None else out.logits[0, :, None, :0]
        return out.logits[0].float().numpy(), mtp.float().numpy()

    def truncate(self, length: int) -> None:
        self.cache.truncate(length)
