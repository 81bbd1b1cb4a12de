"""Tiny random-weight Hugging Face models of every imported family, and transformers' own reference logits.

One builder for the families of `tests/test_hf_import.py` (Llama, Mistral, Qwen2, Qwen3, Phi-3) and of
`tests/test_hf_families.py` (issue #20: Gemma 2, Gemma 3 text, Phi-3.5, Phi-4-mini, Granite, SmolLM3, OLMo 2), plus
a Llama whose config.json is rewritten in transformers 5's shape (`rope_parameters`). All use eager attention, so
transformers' reference is the plain softmax the exporters are compared with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .test_hf_config_generations import to_transformers5
from .test_hf_families import FAMILIES as NEW_FAMILIES
from .test_hf_families import make_family_model
from .test_hf_import import FAMILIES as OLD_FAMILIES
from .test_hf_import import ROPE, make_hf_model

LLAMA_T5 = "llama-t5"  # Llama with llama3 RoPE scaling, config.json in transformers 5's shape
OLDER = ["llama", LLAMA_T5, "mistral", "qwen2", "qwen2-window", "qwen3", "phi3"]
ISSUE_20 = list(NEW_FAMILIES)  # gemma2, gemma3, phi3.5, phi4-mini, granite, smollm3, olmo2
ALL = OLDER + ISSUE_20
LONGROPE = ("phi3.5", "phi4-mini")  # longrope switches factors at original_max_position_embeddings = 32
ORIGINAL_CONTEXT = 32


def build(family: str, out: Path, seed: int = 0):
    """Build, randomize and save_pretrained a model of `family` (with a tokenizer) into `out`; return it (eval)."""
    if family in NEW_FAMILIES:
        return make_family_model(family, out, seed=seed)
    if family == LLAMA_T5:
        model = make_hf_model("llama", out, seed=seed, rope_scaling=ROPE["llama3"], attn_implementation="eager")
        config = json.loads((out / "config.json").read_text())
        v5 = to_transformers5(config)
        assert "rope_theta" not in v5 and "rope_scaling" not in v5 and "rope_parameters" in v5
        (out / "config.json").write_text(json.dumps(v5))
        return model
    assert family in OLD_FAMILIES, family
    return make_hf_model(family, out, seed=seed, attn_implementation="eager")


@torch.no_grad()
def cached_logits(hf_model, tokens: list[int], prefill: int) -> np.ndarray:
    """transformers' logits [T, V] for `tokens`: one call over the first `prefill`, then one token per call through
    its own KV cache (what a runner computes; Phi longrope picks its factors per call, as transformers does)."""
    out = hf_model(torch.tensor([tokens[:prefill]]), use_cache=True)
    rows, cache = [out.logits[0]], out.past_key_values
    for p in range(prefill, len(tokens)):
        position = torch.tensor([p])
        out = hf_model(
            torch.tensor([[tokens[p]]]),
            past_key_values=cache,
            position_ids=position[None],
            cache_position=position,
            use_cache=True,
        )
        rows.append(out.logits[0])
        cache = out.past_key_values
    return torch.cat(rows).float().numpy()


@torch.no_grad()
def cached_greedy(hf_model, prompt: list[int], steps: int) -> list[int]:
    """transformers' greedy tokens through its forward with a KV cache (no `generate`: for Phi longrope, generate
    re-prefills once at the switch; this is the forward-with-cache semantics the runners implement)."""
    out = hf_model(torch.tensor([prompt]), use_cache=True)
    tokens, cache = list(prompt), out.past_key_values
    for _ in range(steps):
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
        position = torch.tensor([len(tokens) - 1])
        out = hf_model(
            torch.tensor([[token]]),
            past_key_values=cache,
            position_ids=position[None],
            cache_position=position,
            use_cache=True,
        )
        cache = out.past_key_values
    return tokens[len(prompt) :]
