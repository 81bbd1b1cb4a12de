"""The Core ML programs: torch.export -> run_decompositions -> ct.convert (never jit.trace: it drops KV writes).

- state (iOS18+): `StatefulStep(inputIds, causalMask) -> logits` with the KV cache as two Core ML states,
  `keyCache` [layers, 1, kv_heads, capacity, key_dim] and `valueCache`, the names and inputs swift-transformers'
  `LanguageModelWithStatefulKVCache` and Apple's stateful Mistral example use. `causalMask` [1, 1, T, end] (fp16,
  additive) tells the step where it is: the T tokens take cache slots and positions end - T .. end - 1. The
  causal rule is also applied in-graph from those positions, so an all-zero mask is valid; negative entries hide
  more slots. MLA caches its latent rows in keyCache; values are rows[..., :kv_latent_dim], so valueCache is a
  [1, 1, 1, 1, 1] placeholder (zeroed each step) that exists only because swift-transformers needs both states.
- io (`--kv io`, alias `stream`; iOS17+): `omnicoder.decode_step.DecodeStep` with `coreml_ops.IOKVSlot` (explicit KV
  in, present KV out, the I/O contract of `omnicoder.io_contract`, names made Core ML-safe) as the `decode`
  function, plus a `prefill` function with no past inputs (Core ML has no zero-length inputs); both live in one
  multifunction .mlpackage sharing their weights (iOS18), or in two packages (iOS17 has no multifunction models).

Quantized models (`omnicoder.quant.QuantLinear`) are traced with `QuantLinearOp` swapped in, so each quantized linear
is an `omnicoder::quant_linear` node that coreml_ops lowers to int4 constexpr weights.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omnicoder.export.coreml_ops import IOKVSlot, StateSlot, mla_decompositions, register_lowerings
from torch import nn

from omnicoder.decode_step import DecodeStep
from omnicoder.io_contract import INPUT_IDS, LOGITS, MTP_LOGITS, POSITION_IDS, RETENTION, kv_names, output_names
from omnicoder.model import OmniCoder
from omnicoder.module_swap import swapped_modules
from omnicoder.quant import as_op_form

PACKAGE = "model.mlpackage"


def coreml_name(name: str) -> str:
    """A contract tensor name (or name template) as a Core ML feature name: `present.0.key` -> `present_0_key`."""
    return name.replace(".", "_")


@dataclass
class Program:
    """One converted function and its I/O description for the manifest."""

    name: str
    model: object  # ct.models.MLModel
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    states: list[dict] = field(default_factory=list)


class StatefulStep(nn.Module):
    """forward(inputIds [1, T] int32, causalMask [1, 1, T, end]) -> logits [1, T, V]; KV in keyCache/valueCache."""

    def __init__(self, model: OmniCoder, capacity: int) -> None:
        super().__init__()
        c = model.config
        self.model, self.capacity = model, capacity
        self.has_values = c.kv_value_dim > 0
        self.register_buffer("keyCache", torch.zeros(c.n_layers, 1, c.kv_heads, capacity, c.kv_key_dim))
        value_shape = (c.n_layers, 1, c.kv_heads, capacity, c.kv_value_dim) if self.has_values else (1, 1, 1, 1, 1)
        self.register_buffer("valueCache", torch.zeros(value_shape))

    def forward(self, inputIds: torch.Tensor, causalMask: torch.Tensor) -> torch.Tensor:  # noqa: N803 (Core ML names)
        t, end = inputIds.shape[1], causalMask.shape[-1]
        input_pos = torch.arange(t) + (end - t)
        extra = causalMask[0, 0].to(torch.float32)
        values = self.valueCache if self.has_values else None
        if not self.has_values:
            self.valueCache.mul_(0.0)  # keep the placeholder a real (written) state
        slots = [StateSlot(self.keyCache, values, i, input_pos, end, extra) for i in range(self.model.config.n_layers)]
        return self.model(inputIds, input_pos.unsqueeze(0), slots, heads=False).logits


class PrefillStep(DecodeStep):
    """DecodeStep with an empty past: forward(input_ids, position_ids) -> the same outputs."""

    def __init__(self, model: OmniCoder) -> None:
        super().__init__(model, slot_class=IOKVSlot)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor):  # type: ignore[override]
        c = self.model.config
        widths = [c.kv_key_dim, c.kv_value_dim] if self.has_values else [c.kv_key_dim]
        empty = [input_ids.new_zeros(1, c.kv_heads, 0, w, dtype=torch.float32) for w in widths] * c.n_layers
        return super().forward(input_ids, position_ids, empty)


def decode_step(model: OmniCoder) -> DecodeStep:
    """The `decode` function's module: KV in, present KV out, Core ML attention."""
    return DecodeStep(model, slot_class=IOKVSlot)


def _export(module: nn.Module, args: tuple, dynamic_shapes, native_mla: bool):
    """torch.export with the quantized linears as `omnicoder::quant_linear` nodes (quant.QuantLinearOp)."""
    with swapped_modules(module, as_op_form), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
        return program.run_decompositions({} if native_mla else mla_decompositions())


def _convert(program, inputs, outputs, states, target, ct):
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(
            program,
            inputs=inputs,
            outputs=outputs,
            states=states or None,
            minimum_deployment_target=target,
            compute_precision=ct.precision.FLOAT16,
            skip_model_load=True,
        )


def _spec(name: str, dtype: str, shape: list) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape}


def convert_stateful(model: OmniCoder, capacity: int, native_mla: bool = True) -> Program:
    """The stateful program (one function, `main`)."""
    import coremltools as ct
    import numpy as np

    register_lowerings()
    step = StatefulStep(model.eval(), capacity).eval()
    # traced up to capacity - 1: torch guards "end != capacity" (a slice that would cover the whole buffer); the
    # MIL slicing ops are generic, and the Core ML inputs below admit the full capacity
    seq = torch.export.Dim("sequence", min=1, max=capacity - 1)
    end = torch.export.Dim("end", min=1, max=capacity - 1)
    args = (torch.zeros(1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, 5))
    program = _export(step, args, {"inputIds": {1: seq}, "causalMask": {2: seq, 3: end}}, native_mla)
    seq_dim = ct.RangeDim(1, capacity, default=1)
    query_dim = ct.RangeDim(1, capacity, default=1)  # its own range, so a [1, 1, 1, end] mask also fits
    end_dim = ct.RangeDim(1, capacity, default=1)
    inputs = [
        ct.TensorType(name="inputIds", shape=(1, seq_dim), dtype=np.int32),
        ct.TensorType(name="causalMask", shape=(1, 1, query_dim, end_dim), dtype=np.float16),
    ]
    key_shape, value_shape = tuple(step.keyCache.shape), tuple(step.valueCache.shape)
    states = [
        ct.StateType(wrapped_type=ct.TensorType(shape=key_shape, dtype=np.float16), name="keyCache"),
        ct.StateType(wrapped_type=ct.TensorType(shape=value_shape, dtype=np.float16), name="valueCache"),
    ]
    outputs = [ct.TensorType(name="logits", dtype=np.float16)]
    mlmodel = _convert(program, inputs, outputs, states, ct.target.iOS18, ct)
    vocab = model.config.vocab_size
    return Program(
        "main",
        mlmodel,
        inputs=[
            _spec("inputIds", "int32", [1, "sequence"]),
            _spec("causalMask", "float16", [1, 1, "sequence", "end"]),
        ],
        outputs=[_spec("logits", "float16", [1, "sequence", vocab])],
        states=[_spec("keyCache", "float16", list(key_shape)), _spec("valueCache", "float16", list(value_shape))],
    )


def _kv_io_output_specs(model: OmniCoder) -> list[dict]:
    c = model.config
    _, present = kv_names(c)
    specs = []
    for name in output_names(c):
        if name == LOGITS:
            shape = [1, "sequence", c.vocab_size]
        elif name == MTP_LOGITS:
            shape = [1, "sequence", c.n_mtp, c.vocab_size]
        elif name == RETENTION:
            shape = [1, "sequence", 3]
        elif name in present:
            width = c.kv_key_dim if name.endswith(".key") else c.kv_value_dim
            shape = [1, c.kv_heads, "total_sequence", width]
        else:  # query.{i}
            shape = [1, c.n_heads, "sequence", c.kv_key_dim]
        specs.append(_spec(coreml_name(name), "float16", shape))
    return specs


def convert_kv_io(model: OmniCoder, capacity: int, target: str, native_mla: bool = True) -> list[Program]:
    """The `prefill` (no past) and `decode` (past >= 1 token) functions."""
    import coremltools as ct
    import numpy as np

    register_lowerings()
    c = model.config
    ct_target = {"iOS17": ct.target.iOS17, "iOS18": ct.target.iOS18}[target]
    past_names, _ = kv_names(c)
    widths = [c.kv_key_dim, c.kv_value_dim] if c.kv_value_dim else [c.kv_key_dim]
    widths = widths * c.n_layers
    out_specs = _kv_io_output_specs(model)
    outputs = [ct.TensorType(name=s["name"], dtype=np.float16) for s in out_specs]
    seq = torch.export.Dim("sequence", min=1, max=capacity)
    ids = torch.zeros(1, 2, dtype=torch.int32)
    positions = torch.tensor([[3, 4]], dtype=torch.int32)
    token_specs = [_spec(INPUT_IDS, "int32", [1, "sequence"]), _spec(POSITION_IDS, "int32", [1, "sequence"])]
    programs = []
    seq_dim = ct.RangeDim(1, capacity, default=1)
    token_inputs = [
        ct.TensorType(name=INPUT_IDS, shape=(1, seq_dim), dtype=np.int32),
        ct.TensorType(name=POSITION_IDS, shape=(1, seq_dim), dtype=np.int32),
    ]
    prefill = _export(
        PrefillStep(model.eval()), (ids, positions), {INPUT_IDS: {1: seq}, POSITION_IDS: {1: seq}}, native_mla
    )
    mlmodel = _convert(prefill, token_inputs, outputs, None, ct_target, ct)
    programs.append(Program("prefill", mlmodel, token_specs, out_specs))
    past = torch.export.Dim("past_sequence", min=1, max=capacity)
    kv = [torch.zeros(1, c.kv_heads, 3, w) for w in widths]
    dynamic = {INPUT_IDS: {1: seq}, POSITION_IDS: {1: seq}, "past": [{2: past} for _ in kv]}
    decode = _export(decode_step(model.eval()), (ids, positions, kv), dynamic, native_mla)
    past_dim = ct.RangeDim(1, capacity, default=1)
    kv_inputs = [
        ct.TensorType(name=coreml_name(n), shape=(1, c.kv_heads, past_dim, w), dtype=np.float16)
        for n, w in zip(past_names, widths, strict=True)
    ]
    mlmodel = _convert(decode, token_inputs + kv_inputs, outputs, None, ct_target, ct)
    kv_specs = [
        _spec(coreml_name(n), "float16", [1, c.kv_heads, "past_sequence", w])
        for n, w in zip(past_names, widths, strict=True)
    ]
    programs.append(Program("decode", mlmodel, token_specs + kv_specs, out_specs))
    return programs


def _describe(mlmodel, info: dict) -> None:
    mlmodel.user_defined_metadata.update(info["metadata"])
    mlmodel.short_description = info["short_description"]
    mlmodel.version = info["version"]


def save_package(programs: list[Program], directory: Path, parts: Path, info: dict, multifunction: bool) -> dict:
    """Write the programs into `directory`; return {function: {"file", "function"}} for the manifest.

    The last program is the default function and goes to model.mlpackage. With several programs and
    `multifunction` (iOS18+), they share that package and its weights (identical weights are stored once);
    without it (iOS17 has no multifunction models) each other program gets its own `<name>.mlpackage`.
    """
    import coremltools as ct

    default = programs[-1]
    if len(programs) == 1 or not multifunction:
        packages = {}
        for program in programs:
            name = PACKAGE if program is default else f"{program.name}.mlpackage"
            _describe(program.model, info)
            program.model.save(str(directory / name))
            _drop_debug_files(directory / name)
            packages[program.name] = {"file": name, "function": "main"}
        return packages
    desc = ct.utils.MultiFunctionDescriptor()
    for program in programs:
        part = parts / f"{program.name}.mlpackage"
        program.model.save(str(part))
        desc.add_function(str(part), src_function_name="main", target_function_name=program.name)
    desc.default_function_name = default.name
    merged = parts / "merged.mlpackage"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct.utils.save_multifunction(desc, str(merged))
        mlmodel = ct.models.MLModel(str(merged), skip_model_load=True)  # save_multifunction drops the metadata
    _describe(mlmodel, info)
    mlmodel.save(str(directory / PACKAGE))
    _drop_debug_files(directory / PACKAGE)
    return {program.name: {"file": PACKAGE, "function": program.name} for program in programs}


def _drop_debug_files(path: Path) -> None:
    """coremltools adds ExecuTorch's debug-handle map to packages converted from torch.export; apps never read it."""
    (path / "executorch_debug_handle_mapping.json").unlink(missing_ok=True)
