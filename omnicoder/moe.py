"""Sparse mixture-of-experts feed-forward (issue #21): router, routed experts, optional shared expert.

Routing (`Router`, in fp32 like transformers), per the config's `moe_gating`:
- "softmax": p = softmax(logits) over all experts, the top-k of p (Qwen2/3-MoE, OLMoE, Mixtral, DeepSeek-V2);
- "topk_softmax": the top-k logits, then a softmax over those k (Granite-MoE);
- "sigmoid": s = sigmoid(logits); the choice ranks s + score_bias (DeepSeek-V3's e_score_correction_bias), the
  weights are s of the chosen experts (DeepSeek-V3).
Group-limited routing (moe_n_group > 1) keeps only the experts of the best moe_topk_group groups eligible; a group
ranks by its best score (softmax: DeepSeek-V2's group_limited_greedy) or the sum of its best two (sigmoid:
DeepSeek-V3). Then moe_norm_topk renormalises the k weights to sum 1, and moe_routed_scale multiplies them.

The routed experts are one `ExpertBank`: stacked weights gate_proj / up_proj [E, H, d] and down_proj [E, d, H]
(nn.Linear's [out, in] per expert), so one expert is a contiguous slice (what expert paging and an exporter's
gather address). Three forms compute the same sum of weighted expert outputs (`MoEFeedForward.form`):
- "loop": each expert over the tokens routed to it, accumulated with index_add (the exact eager reference, what
  transformers does; data-dependent shapes, so not traceable);
- "gather": the k chosen experts' weights gathered per token (Gather + batched MatMul): cheap when tokens x k is
  small (decode, T=1) and traceable with standard ops;
- "dense": every expert on every token, weighted by a [N, E] matrix that is zero off the chosen experts (standard
  ops only, exact, E/k times the compute; a fallback lowering).
"auto" picks "gather" when tokens x k <= E, else "loop".

In training the module keeps `aux_loss`, the Switch-style load-balancing loss of its last forward
(`load_balancing_loss`), and `expert_load`, the assignments per expert.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from omnicoder.config import OmniCoderConfig
from omnicoder.layers import GatedMLP

FORMS = ("auto", "loop", "gather", "dense")


class Routing(NamedTuple):
    weights: torch.Tensor  # [N, k] fp32: each chosen expert's weight (normalised / scaled as configured)
    ids: torch.Tensor  # [N, k] int64: the chosen experts
    probs: torch.Tensor  # [N, E] fp32: the router's distribution over all experts (the load-balancing loss's P)


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    return F.gelu(x, approximate="tanh") if activation == "gelu_tanh" else F.silu(x)


class Router(nn.Module):
    """Linear scores over the experts, top-k choice and weights (see the module docstring)."""

    def __init__(self, config: OmniCoderConfig) -> None:
        super().__init__()
        c = config
        self.top_k, self.gating, self.norm_topk, self.scale = (
            c.moe_top_k,
            c.moe_gating,
            c.moe_norm_topk,
            c.moe_routed_scale,
        )
        self.n_group, self.topk_group = max(c.moe_n_group, 1), c.moe_topk_group
        self.weight = nn.Parameter(torch.randn(c.moe_experts, c.d_model) * 0.02)
        self.register_buffer("score_bias", torch.zeros(c.moe_experts) if c.moe_score_bias else None)

    def _group_mask(self, choice: torch.Tensor) -> torch.Tensor:
        """[N, E] bool: experts in the best topk_group groups (a group ranks by its max, or top-2 sum for sigmoid)."""
        n, e = choice.shape
        grouped = choice.view(n, self.n_group, e // self.n_group)
        top2 = self.gating == "sigmoid"
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1) if top2 else grouped.amax(dim=-1)
        best = group_scores.topk(self.topk_group, dim=-1).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best, True)
        return keep.unsqueeze(-1).expand(n, self.n_group, e // self.n_group).reshape(n, e)

    def forward(self, x: torch.Tensor) -> Routing:
        logits = F.linear(x.float(), self.weight.float())  # [N, E]
        if self.gating == "topk_softmax":
            top, ids = logits.topk(self.top_k, dim=-1)
            return Routing(torch.softmax(top, dim=-1) * self.scale, ids, torch.softmax(logits, dim=-1))
        scores = torch.sigmoid(logits) if self.gating == "sigmoid" else torch.softmax(logits, dim=-1)
        choice = scores if self.score_bias is None else scores + self.score_bias.float()
        if self.n_group > 1:
            choice = choice.masked_fill(~self._group_mask(choice), float("-inf"))
        ids = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if self.norm_topk:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        probs = scores if self.gating == "softmax" else scores / scores.sum(dim=-1, keepdim=True)
        return Routing(weights * self.scale if self.scale != 1.0 else weights, ids, probs)


class ExpertBank(nn.Module):
    """E gated MLPs (down(act(gate(x)) * up(x))) with stacked weights: gate_proj / up_proj [E, H, d],
    down_proj [E, d, H]."""

    def __init__(self, experts: int, dim: int, hidden: int, activation: str = "silu") -> None:
        super().__init__()
        self.activation = activation
        self.gate_proj = nn.Parameter(torch.randn(experts, hidden, dim) * 0.02)
        self.up_proj = nn.Parameter(torch.randn(experts, hidden, dim) * 0.02)
        self.down_proj = nn.Parameter(torch.randn(experts, dim, hidden) * 0.02)

    @property
    def count(self) -> int:
        return self.gate_proj.shape[0]

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert `e` on rows x [M, d] -> [M, d]."""
        h = _activate(F.linear(x, self.gate_proj[e]), self.activation) * F.linear(x, self.up_proj[e])
        return F.linear(h, self.down_proj[e])

    def gathered(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The chosen experts on their tokens: x [N, d], ids [N, k] -> [N, k, d] (weights gathered per token)."""
        gate = torch.einsum("nd,nkhd->nkh", x, self.gate_proj[ids])
        up = torch.einsum("nd,nkhd->nkh", x, self.up_proj[ids])
        return torch.einsum("nkh,nkdh->nkd", _activate(gate, self.activation) * up, self.down_proj[ids])

    def all_experts(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on every token: x [N, d] -> [N, E, d]."""
        gate = torch.einsum("nd,ehd->neh", x, self.gate_proj)
        up = torch.einsum("nd,ehd->neh", x, self.up_proj)
        return torch.einsum("neh,edh->ned", _activate(gate, self.activation) * up, self.down_proj)


def load_balancing_loss(probs: torch.Tensor, ids: torch.Tensor, experts: int) -> torch.Tensor:
    """Switch-style auxiliary loss E * sum_e f_e * P_e: f_e the share of the N x k assignments that went to expert e,
    P_e the mean router probability of e. 1.0 when routing is uniform, up to E when it collapses onto one expert."""
    counts = torch.zeros(experts, device=ids.device, dtype=probs.dtype).scatter_add_(
        0, ids.reshape(-1), torch.ones(ids.numel(), device=ids.device, dtype=probs.dtype)
    )
    share = counts / ids.numel()
    return experts * (share * probs.mean(dim=0)).sum()


class MoEFeedForward(nn.Module):
    """The MoE feed-forward of one layer: routed experts (+ a shared expert, optionally gated by
    sigmoid(shared_gate(x))). x [B, T, d] -> [B, T, d]."""

    def __init__(self, config: OmniCoderConfig) -> None:
        super().__init__()
        c = config
        self.router = Router(c)
        self.experts = ExpertBank(c.moe_experts, c.d_model, c.moe_hidden, c.mlp_activation)
        self.shared = GatedMLP(c.d_model, c.moe_shared_hidden, c.mlp_activation) if c.moe_shared_hidden else None
        self.shared_gate = nn.Linear(c.d_model, 1, bias=False) if c.moe_shared_gate else None
        self.form = "auto"
        self.aux_loss: torch.Tensor | None = None
        self.expert_load: torch.Tensor | None = None

    def routed(self, x: torch.Tensor, routing: Routing, form: str = "auto") -> torch.Tensor:
        """The weighted sum of the chosen experts' outputs for rows x [N, d] -> [N, d], in form `form`."""
        n, k = routing.ids.shape
        if form == "auto":
            form = "gather" if n * k <= self.experts.count else "loop"
        weights = routing.weights.to(x.dtype)
        if form == "gather":
            return (self.experts.gathered(x, routing.ids) * weights.unsqueeze(-1)).sum(dim=1)
        if form == "dense":
            dense = torch.zeros(n, self.experts.count, dtype=x.dtype, device=x.device).scatter(1, routing.ids, weights)
            return (self.experts.all_experts(x) * dense.unsqueeze(-1)).sum(dim=1)
        if form != "loop":
            raise ValueError(f"unknown MoE form {form!r}; use one of {', '.join(FORMS)}")
        out = torch.zeros_like(x)
        for e in range(self.experts.count):
            token, slot = torch.where(routing.ids == e)
            if token.numel():
                out.index_add_(0, token, self.experts.expert(e, x[token]) * weights[token, slot, None])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        routing = self.router(rows)
        out = self.routed(rows, routing, self.form)
        self.aux_loss = self.expert_load = None
        if self.training:
            self.aux_loss = load_balancing_loss(routing.probs, routing.ids, self.experts.count)
            self.expert_load = torch.bincount(routing.ids.reshape(-1), minlength=self.experts.count).detach()
        if self.shared is not None:
            shared = self.shared(rows)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(rows)) * shared
            out = out + shared
        return out.reshape(shape)


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    """The MoE feed-forwards of a model, in layer order."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def set_moe_form(model: nn.Module, form: str) -> None:
    """Switch every MoE layer to one form ("auto", "loop", "gather", "dense"): what an exporter sets before tracing."""
    if form not in FORMS:
        raise ValueError(f"unknown MoE form {form!r}; use one of {', '.join(FORMS)}")
    for layer in moe_layers(model):
        layer.form = form


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The mean load-balancing loss of the MoE layers' last training forward; None without MoE layers."""
    losses = [m.aux_loss for m in moe_layers(model) if m.aux_loss is not None]
    return torch.stack(losses).mean() if losses else None


@torch.no_grad()
def update_score_bias(model: nn.Module, rate: float) -> None:
    """DeepSeek-V3's auxiliary-loss-free balancing: after a step, raise the choice bias of the experts that got fewer
    than the mean assignments and lower it for the others, by `rate` (layers with moe_score_bias only)."""
    for layer in moe_layers(model):
        bias, load = layer.router.score_bias, layer.expert_load
        if bias is not None and load is not None and rate > 0:
            load = load.float()
            bias += rate * torch.sign(load.mean() - load)


def active_parameters(model: nn.Module) -> int:
    """Parameters one token uses: all, less the routed experts it is not sent to (E - k per MoE layer)."""
    total = sum(p.numel() for p in model.parameters())
    for layer in moe_layers(model):
        bank = layer.experts
        per_expert = sum(p[0].numel() for p in (bank.gate_proj, bank.up_proj, bank.down_proj))
        total -= (bank.count - layer.router.top_k) * per_expert
    return total
