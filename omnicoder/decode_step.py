"""The decode step with flat KV inputs and outputs, laid out as the bundle's I/O contract (omnicoder.io_contract).

forward(input_ids [B, T], position_ids [B, T], past: list of KV tensors) -> (logits, [mtp_logits], [retention],
present KV tensors..., [query.{i}...]). Every KV-in/KV-out program is this module traced with a target's KV-slot
class (`omnicoder.kv_slot`): ONNX (custom-op nodes), Core ML `--kv io` and ExecuTorch `--kv io`. With a
fp16/u8/nf4 `spec` the KV tensors are the stored (quantized) ones of `omnicoder.kv_quant`: new tokens are quantized
and the past dequantized inside the program, attended with the slot class's `sdpa` kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from omnicoder.config import OmniCoderConfig
from omnicoder.io_contract import kv_slots
from omnicoder.kv_quant import KVQuantSpec, QuantizedKVSlot, quantize
from omnicoder.kv_slot import KVSlot, PastKV
from omnicoder.model import OmniCoder


class DecodeStep(nn.Module):
    """The model with flat KV inputs and outputs. `slot_class` builds each layer's slot from its (key, value)."""

    def __init__(
        self,
        model: OmniCoder,
        spec: KVQuantSpec | None = None,
        queries: bool = True,
        slot_class: type[PastKV] = PastKV,
    ) -> None:
        super().__init__()
        self.model, self.queries, self.slot_class = model, queries, slot_class
        self.spec = spec or KVQuantSpec()
        self.has_values = model.config.kv_value_dim > 0
        self.parts = [len(self.spec.components(width)) for _, _, width in kv_slots(model.config)]

    def _layer_slots(self, past: list[torch.Tensor]) -> list[KVSlot]:
        if self.spec.dtype == "fp32":
            if self.has_values:
                return [self.slot_class((past[2 * i], past[2 * i + 1])) for i in range(len(past) // 2)]
            return [self.slot_class((k, k[..., :0])) for k in past]
        groups, start = [], 0
        for n in self.parts:
            groups.append(list(past[start : start + n]))
            start += n
        sdpa = self.slot_class.sdpa
        if self.has_values:
            pairs = [(groups[2 * i], groups[2 * i + 1]) for i in range(len(groups) // 2)]
        else:
            pairs = [(g, None) for g in groups]
        return [QuantizedKVSlot(self.spec, key, value, sdpa) for key, value in pairs]

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, past: list[torch.Tensor]):
        slots = self._layer_slots(past)
        out = self.model(input_ids, position_ids, slots)
        results = [out.logits]
        if out.mtp_logits is not None:
            results.append(out.mtp_logits)
        if out.retention is not None:
            results.append(out.retention)
        if self.spec.dtype == "fp32":
            for key, value in out.present_kv:
                results.append(key)
                if self.has_values:
                    results.append(value)
        else:
            for slot in slots:
                for stored in slot.present:
                    results.extend(stored)
        if self.queries:
            results.extend(out.queries)
        return tuple(results)


def example_inputs(config: OmniCoderConfig, batch: int = 2, seq: int = 3, past: int = 5, spec=None):
    """Random (input_ids, position_ids, past KV tensors) for tracing a DecodeStep."""
    spec = spec or KVQuantSpec()
    ids = torch.randint(0, 256, (batch, seq))
    positions = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    kv = []
    for _, _, width in kv_slots(config):
        kv.extend(quantize(torch.randn(batch, config.kv_heads, past, width), spec))
    return ids, positions, kv
