"""Small building blocks: RMSNorm and the gated MLP (SwiGLU, or GeGLU with tanh-approximated GELU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight. `delegable(True)` switches to the same math, fp32, in ops XNNPACK delegates whole (the
    mean of squares as a linear layer against 1/d): F.rms_norm decomposes into mean.dim over the last axis, which
    XNNPACK takes only for 4-D tensors, so each norm would split the ExecuTorch delegate."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        # the delegable form's constants (non-persistent buffers; None in the default form)
        self.register_buffer("average", None, persistent=False)  # [1, dim] of 1/dim
        self.register_buffer("eps_tensor", None, persistent=False)  # [1] of eps

    def delegable(self, on: bool) -> None:
        dim = self.weight.shape[0]
        self.average = torch.full((1, dim), 1.0 / dim) if on else None
        self.eps_tensor = torch.tensor([self.eps]) if on else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.average is not None:
            return x * torch.rsqrt(F.linear(x * x, self.average) + self.eps_tensor) * self.weight
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)); act is "silu" (SwiGLU) or "gelu_tanh" (Gemma's gelu_pytorch_tanh).
    `delegable(True)` writes tanh-GELU out in elementary ops: ExecuTorch 1.5.1's XNNPACK delegate runs
    aten.gelu(approximate="tanh") as erf-GELU (about 5e-4 off)."""

    def __init__(self, dim: int, hidden: int, activation: str = "silu") -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.activation = activation
        self.written_out = False

    def delegable(self, on: bool) -> None:
        self.written_out = on

    def act(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation != "gelu_tanh":
            return F.silu(x)
        if self.written_out:
            return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
        return F.gelu(x, approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
