"""Reference KV-cached generation in PyTorch: prefill the prompt, then decode one token per step."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from omnicoder.errors import OmniCoderError
from omnicoder.kv_cache import KVCache
from omnicoder.model import OmniCoder
from omnicoder.runtimes.sampling import Sampler
from omnicoder.runtimes.stats import GenerationStats, peak_rss_mb
from omnicoder.tokenizer import Tokenizer


@torch.no_grad()
def generate_ids(
    model: OmniCoder,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampler: Sampler,
    eos_id: int,
    on_token: Callable[[int], None] | None = None,
) -> tuple[list[int], GenerationStats]:
    """Generate up to max_new_tokens ids after prompt_ids; stops at EOS or the model's context."""
    context = model.config.max_seq_len
    if len(prompt_ids) > context:
        raise OmniCoderError(f"the prompt is {len(prompt_ids)} tokens, longer than the model's context ({context})")
    stats = GenerationStats(prompt_tokens=len(prompt_ids), stop_reason="limit")
    cache = KVCache(model.config.n_layers)
    out: list[int] = []
    ids = torch.tensor([prompt_ids])
    positions = torch.arange(len(prompt_ids)).unsqueeze(0)
    start = time.perf_counter()
    for step in range(max_new_tokens):
        result = model(ids, positions, cache.past(), heads=False)
        cache.append(result.new_kv)
        token = sampler.sample(result.logits[0, -1].float().numpy())
        now = time.perf_counter()
        if step == 0:
            stats.prefill_seconds, start = now - start, now
        if token == eos_id:
            stats.stop_reason = "eos"
            break
        out.append(token)
        if on_token is not None:
            on_token(token)
        if cache.length >= context:
            stats.stop_reason = "context"
            break
        ids = torch.tensor([[token]])
        positions = torch.tensor([[cache.length]])
    stats.decode_seconds = time.perf_counter() - start if out else 0.0
    stats.generated_tokens = len(out)
    stats.peak_rss_mb = peak_rss_mb()
    return out, stats


def generate_text(
    model: OmniCoder,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    sampler: Sampler,
    on_text: Callable[[str], None] | None = None,
) -> tuple[str, GenerationStats]:
    """Generate a completion of `prompt`, streaming decoded text pieces to on_text."""
    decoder = tokenizer.stream_decoder()
    pieces: list[str] = []

    def emit(token: int) -> None:
        piece = decoder.push(token)
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)

    _, stats = generate_ids(
        model, tokenizer.encode(prompt, add_bos=True), max_new_tokens, sampler, tokenizer.eos_id, emit
    )
    tail = decoder.flush()
    if tail:
        pieces.append(tail)
        if on_text is not None:
            on_text(tail)
    return "".join(pieces), stats
