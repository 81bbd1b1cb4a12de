"""A token-level KV cache under a memory budget: learned retention, StreamingLLM and H2O. Torch-free (numpy).

The cache keeps its resident bytes under `budget_bytes`, always keeping the first `sink_tokens` and the last
`recent_window` tokens (default: 3/4 of what the budget holds); when over budget the lowest-ranked other token is
handled: `learned` (the model's retention head, model.retention.json) ranks by logit(keep) - logit(drop) and first
compresses a token not classed "drop" (NF4 rows) before evicting; `streaming` (Xiao et al. 2023) evicts the
oldest; `h2o` (Zhang et al. 2023) ranks by accumulated attention from the graph's query outputs. The signals are
graph outputs the cache asks each call for (`extra_outputs`); calls take RETENTION_CHUNK tokens, so the policy
acts between them. Positions stay absolute: eviction never shifts RoPE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from omnicoder.runtimes.kv_cache import UNBOUNDED, KVCache, as_numpy
from omnicoder.runtimes.kv_format import KVLayout, round_trip, row_bytes

from omnicoder.errors import OmniCoderError
from omnicoder.io_contract import RETENTION

POLICIES = ("learned", "streaming", "h2o")
RETENTION_CHUNK = 8  # tokens per call under a retention budget (the policy acts between calls)


@dataclass
class RetentionPolicy:
    budget_bytes: int
    policy: str = "learned"
    sink_tokens: int = 4
    recent_window: int = 0  # 0: recent_fraction of the tokens the budget holds in full precision
    compress_group: int = 16
    compress: str = "nf4"  # how a compressed token's rows are stored: nf4 | u8 | none (evict instead)
    recent_fraction: float = 0.75

    def validate(self) -> RetentionPolicy:
        if self.policy not in POLICIES:
            raise OmniCoderError(f"--retention {self.policy} is unknown; use one of {', '.join(POLICIES)}")
        if self.budget_bytes <= 0 or self.sink_tokens < 0 or self.recent_window < 0:
            raise OmniCoderError("retention needs a KV budget > 0, sink tokens >= 0 and a recent window >= 0")
        if self.compress not in ("nf4", "u8", "none"):
            raise OmniCoderError(f"retention compress {self.compress} is unknown; use nf4, u8 or none")
        return self


class RetentionKVCache(KVCache):
    """Per-token KV rows with budgeted eviction (see the module docstring).

    `queries`: the graph's query outputs by layer, which H2O scores held tokens with.
    """

    tokens_per_call = RETENTION_CHUNK

    def __init__(
        self, layout: KVLayout, policy: RetentionPolicy, query_scale: float = 1.0, queries: list[str] | None = None
    ) -> None:
        if layout.kv_dtype != "fp32":
            raise OmniCoderError("retention runs on bundles with fp32 KV (it compresses rows itself); re-export")
        self.layout, self.policy, self.query_scale = layout, policy.validate(), query_scale
        self.queries = list(queries or [])
        self.extra_outputs = (RETENTION,) * (policy.policy == "learned") + tuple(self.queries)
        self.token_bytes = layout.bytes_per_token()
        full_tokens = policy.budget_bytes / self.token_bytes
        self.recent = policy.recent_window or max(1, int(policy.recent_fraction * full_tokens))
        stored = "fp32" if policy.compress == "none" else policy.compress
        self.compress_bytes = sum(layout.heads * row_bytes(w, stored, policy.compress_group) for w in layout.widths)
        self.reset()

    def reset(self) -> None:
        self.rows = {
            name: np.zeros((self.layout.heads, 0, w), np.float32)
            for name, w in zip(self.layout.inputs, self.layout.widths, strict=True)
        }
        self.positions = np.zeros(0, np.int64)  # cache-order index of each held token
        self.score = np.zeros(0)
        self.klass = np.zeros(0, np.int64)  # retention class: 0 keep, 1 compress, 2 drop
        self.compressed = np.zeros(0, bool)
        self._length = 0
        self._pending_retention: np.ndarray | None = None
        self.evicted = 0

    @property
    def length(self) -> int:
        return self._length

    def feeds(self) -> dict[str, np.ndarray]:
        return {name: rows[None] for name, rows in self.rows.items()}

    def context_limit(self, model_context: int) -> int:
        return UNBOUNDED  # positions stay absolute; the budget bounds what is attended

    def observe_outputs(self, outputs: dict[str, np.ndarray]) -> None:
        """Per-call signals from the graph: retention logits [T, 3] of the new tokens; queries by layer [Hq, T, W]."""
        self._pending_retention = outputs[RETENTION][0] if RETENTION in self.extra_outputs else None
        if self.queries and len(self.positions):
            self._accumulate_attention({i: outputs[q][0] for i, q in enumerate(self.queries)})

    def update(self, presents: dict, new_tokens: int) -> None:
        for name, value in presents.items():
            self.rows[name] = np.concatenate((self.rows[name], as_numpy(value)[0, :, -new_tokens:]), axis=1)
        self.positions = np.concatenate((self.positions, np.arange(self._length, self._length + new_tokens)))
        if self._pending_retention is not None:
            logits = self._pending_retention[-new_tokens:]
            score, klass = logits[:, 0] - logits[:, 2], logits.argmax(-1)
        else:
            score, klass = np.zeros(new_tokens), np.zeros(new_tokens, np.int64)
        self.score = np.concatenate((self.score, score if self.policy.policy == "learned" else np.zeros(new_tokens)))
        self.klass = np.concatenate((self.klass, klass))
        self.compressed = np.concatenate((self.compressed, np.zeros(new_tokens, bool)))
        self._length += new_tokens
        self._pending_retention = None
        self._enforce_budget()

    def truncate(self, length: int) -> None:
        keep = self.positions < length
        self._select(keep)
        self._length = length

    def nbytes(self) -> int:
        """Resident bytes as stored: full rows plus NF4 rows for compressed tokens."""
        n_compressed = int(self.compressed.sum())
        return (len(self.positions) - n_compressed) * self.token_bytes + n_compressed * self.compress_bytes

    def _candidates(self) -> np.ndarray:
        protected = (self.positions < self.policy.sink_tokens) | (self.positions >= self._length - self.recent)
        return np.flatnonzero(~protected)

    def _enforce_budget(self) -> None:
        while self.nbytes() > self.policy.budget_bytes:
            candidates = self._candidates()
            if not len(candidates):
                raise OmniCoderError(
                    f"a KV budget of {self.policy.budget_bytes} bytes cannot hold the {self.policy.sink_tokens} sink "
                    f"and {self.recent} recent tokens; raise the budget or shrink the window"
                )
            rank = self.positions[candidates] if self.policy.policy == "streaming" else self.score[candidates]
            if self.policy.policy == "learned" and self.policy.compress != "none":
                fresh = candidates[(~self.compressed[candidates]) & (self.klass[candidates] != 2)]
                if len(fresh):  # compress the lowest-ranked token that the head does not want dropped
                    victim = fresh[int(np.argmin(self.score[fresh]))]
                    for rows in self.rows.values():
                        rows[:, victim] = round_trip(rows[:, victim], self.policy.compress, self.policy.compress_group)
                    self.compressed[victim] = True
                    continue
            victim = candidates[int(np.argmin(rank))]
            keep = np.ones(len(self.positions), bool)
            keep[victim] = False
            self._select(keep)
            self.evicted += 1

    def _select(self, keep: np.ndarray) -> None:
        self.rows = {name: rows[:, keep] for name, rows in self.rows.items()}
        self.positions, self.score = self.positions[keep], self.score[keep]
        self.klass, self.compressed = self.klass[keep], self.compressed[keep]

    def _accumulate_attention(self, queries: dict[int, np.ndarray]) -> None:
        """H2O: add each held token's attention probability from the new queries (all layers and heads)."""
        for layer, q in queries.items():
            keys = self.rows[self.layout.key_slots[layer][0]]  # [Hkv, n, W]
            hq = q.shape[0]
            grouped = q.reshape(keys.shape[0], hq // keys.shape[0], *q.shape[1:])  # [Hkv, g, T, W]
            logits = np.einsum("hgtw,hnw->hgtn", grouped, keys) * self.query_scale
            logits -= logits.max(-1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(-1, keepdims=True)
            self.score += probs.sum((0, 1, 2))


def query_scale(model: dict) -> float:
    """The attention scale of the graph's query outputs against the cached keys."""
    width = model["head_dim"] + (model["rope_head_dim"] if model["attention"] == "mla" else 0)
    return 1.0 / math.sqrt(width)
