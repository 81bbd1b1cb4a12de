"""Train the retention head: keep / compress / drop per token, distilled from the attention each token receives.

The target of token j is how much attention later tokens pay it once it has left the recent window (which a
cache keeps anyway): the attention probability it gets from the queries j+min_distance .. j+horizon, averaged
over every layer and head of the frozen model. Tokens are ranked by that mass
within their window; the top `keep_fraction` are labelled keep, the bottom `drop_fraction` drop, the rest
compress. Only the retention head (a linear layer on the last hidden state) trains; every other weight stays
bit-identical. At run time a KV cache ranks tokens by `score = logit(keep) - logit(drop)` (runtimes/kv_retention.py).

    omnicoder-train-retention --model default --out DIR [--windows 256 --steps 400]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from omnicoder.kv_slot import KVSlot
from omnicoder.model import OmniCoder
from omnicoder.ops import AttentionSpec, softcap_scores


@dataclass
class RetentionTraining:
    windows: int = 256  # training windows of the model's context
    horizon: int = 256  # later queries whose attention counts ...
    min_distance: int = 64  # ... from this distance on (the runtime's recent window keeps closer tokens)
    keep_fraction: float = 0.25
    drop_fraction: float = 0.45
    steps: int = 400
    lr: float = 1e-2
    seed: int = 0


class AttentionRecorder(KVSlot):
    """A full-sequence `past` for one layer that attends explicitly and records the probabilities."""

    def __init__(self) -> None:
        self.probs: torch.Tensor | None = None  # [B, H, T, T]

    def _attend(self, q, k, v, spec: AttentionSpec):
        t = q.shape[2]
        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        if spec.window > 0:
            causal &= ~torch.ones(t, t, dtype=torch.bool).tril(-spec.window)
        scores = softcap_scores(q @ k.transpose(-1, -2) * spec.scale, spec.softcap)
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        self.probs = probs
        return probs @ v

    def attend(self, q, k, v, spec: AttentionSpec):
        return self._attend(q, k, v, spec), k, v

    def attend_latent(self, q, row, latent_dim: int, spec: AttentionSpec):
        return self._attend(q, row, row[..., :latent_dim], spec), row


def attention_received(probs: list[torch.Tensor], horizon: int, min_distance: int = 1) -> torch.Tensor:
    """[B, T]: attention token j gets from queries j+min_distance .. j+horizon, mean over layers and heads."""
    mean = torch.stack([p.mean(1) for p in probs]).mean(0)  # [B, Tq, Tk]
    t = mean.shape[-1]
    q_idx = torch.arange(t).unsqueeze(1)
    k_idx = torch.arange(t).unsqueeze(0)
    later = (q_idx - k_idx >= max(min_distance, 1)) & (q_idx - k_idx <= horizon)
    return (mean * later).sum(1)


def labels_from_mass(mass: torch.Tensor, valid: int, keep: float, drop: float) -> torch.Tensor:
    """Class per token (0 keep, 1 compress, 2 drop) by rank within each window's first `valid` tokens."""
    ranks = mass[:, :valid].argsort(-1, descending=True).argsort(-1).float() / valid
    labels = torch.ones_like(ranks, dtype=torch.long)
    labels[ranks < keep] = 0
    labels[ranks >= 1 - drop] = 2
    return labels


@torch.no_grad()
def collect(model: OmniCoder, stream: np.ndarray, settings: RetentionTraining) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and labels of tokens that have a full horizon of later queries."""
    from omnicoder.data import sample_batch

    window = model.config.max_seq_len
    valid = window - settings.horizon
    hidden, labels = [], []
    for step in tqdm(range(settings.windows // 8), desc="attention targets", unit="batch"):
        ids = torch.from_numpy(sample_batch(stream, 8, window, settings.seed, step).astype(np.int64))
        recorders = [AttentionRecorder() for _ in range(model.config.n_layers)]
        out = model(ids, torch.arange(window).expand(ids.shape[0], -1), recorders, heads=False)
        mass = attention_received([r.probs for r in recorders], settings.horizon, settings.min_distance)
        labels.append(labels_from_mass(mass, valid, settings.keep_fraction, settings.drop_fraction).reshape(-1))
        hidden.append(out.hidden[:, :valid].reshape(-1, out.hidden.shape[-1]))
    return torch.cat(hidden), torch.cat(labels)


def train_retention_head(model: OmniCoder, stream: np.ndarray, settings: RetentionTraining) -> dict:
    """Fit `model.retention_head` in place; returns held-in accuracy and the class balance."""
    hidden, labels = collect(model.eval(), stream, settings)
    head = model.retention_head
    torch.manual_seed(settings.seed)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=0.0)
    split = int(0.9 * len(labels))
    order = torch.randperm(len(labels))
    train, test = order[:split], order[split:]
    for step in tqdm(range(settings.steps), desc="retention head", unit="step"):
        batch = train[torch.randint(0, len(train), (4096,))]
        loss = torch.nn.functional.cross_entropy(head(hidden[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        optimizer.step()
    with torch.no_grad():
        logits = head(hidden[test])
        accuracy = float((logits.argmax(-1) == labels[test]).float().mean())
        score = logits[:, 0] - logits[:, 2]
        # how often a true keep outranks a true drop (pairwise ranking quality of the score)
        keep, drop = score[labels[test] == 0], score[labels[test] == 2]
        pairs = (keep[:, None] > drop[None, :]).float().mean() if len(keep) and len(drop) else torch.tensor(0.0)
    return {
        "samples": len(labels),
        "heldin_accuracy": round(accuracy, 4),
        "keep_over_drop_auc": round(float(pairs), 4),
        "class_balance": [round(float((labels == c).float().mean()), 3) for c in range(3)],
        "final_loss": round(float(loss), 4),
    }
