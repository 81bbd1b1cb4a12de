"""The manifest checked against the graph onnxruntime loaded: input and output names, dtypes and static dims,
and the model figures in the graph's metadata. Torch-free. Runs before any KV buffer is allocated, so a
manifest that disagrees with its graph (layers, heads, widths, KV names and dtypes, vocabulary, context) is
one line, never an onnxruntime exception or an allocation sized by a false number.
"""

from __future__ import annotations

import os

import onnxruntime as ort
from omnicoder.runtimes.bundle import Bundle
from omnicoder.runtimes.kv_format import KVLayout

from omnicoder.errors import OmniCoderError

_STATE = ort.capi.onnxruntime_pybind11_state
ORT_ERRORS = tuple(value for value in vars(_STATE).values() if isinstance(value, type) and issubclass(value, Exception))
ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)"}
METADATA = ("n_layers", "n_heads", "n_kv_heads", "head_dim", "kv_latent_dim", "rope_head_dim", "vocab_size")
METADATA += ("context_length", "bos_id", "eos_id")
FIX = "the manifest does not describe this graph; re-export the bundle with omnicoder-export"


def ort_message(exc: BaseException) -> str:
    """onnxruntime's first line, without its '[ONNXRuntimeError] : 1 : FAIL :' prefix noise."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return " ".join(lines[0].split())[:300]


def check_session(bundle: Bundle, session: ort.InferenceSession) -> None:
    """Raise OmniCoderError when the graph's I/O or metadata contradict the manifest."""
    model, kv = bundle.model, bundle.graph["kv"]
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    layout = KVLayout(kv, model["n_layers"])
    wanted = {"input_ids", "position_ids", *layout.inputs}
    if set(inputs) != wanted:
        missing, extra = sorted(wanted - set(inputs)), sorted(set(inputs) - wanted)
        raise OmniCoderError(
            f"the graph has {len(inputs) - 2} KV inputs, manifest.json describes {len(layout.inputs)} "
            f"({model['n_layers']} layers; missing {missing[:2]}, unexpected {extra[:2]}); {FIX}"
        )
    for name in ("input_ids", "position_ids"):
        if inputs[name].type != "tensor(int64)":
            raise OmniCoderError(f"graph input {name} is {inputs[name].type}, not int64; {FIX}")
    for name, width, dtype in zip(layout.inputs, layout.widths, layout.dtypes, strict=True):
        _check_kv_tensor(inputs[name], name, width, dtype, kv["heads"])
    for name, width, dtype in zip(layout.outputs, layout.widths, layout.dtypes, strict=True):
        if name not in outputs:
            raise OmniCoderError(f"graph output {name} named by manifest.json graph.kv does not exist; {FIX}")
        _check_kv_tensor(outputs[name], name, width, dtype, kv["heads"])
    logits = outputs.get("logits")
    if logits is None or logits.type != "tensor(float)":
        raise OmniCoderError(f"the graph has no float logits output; {FIX}")
    if isinstance(logits.shape[-1], int) and logits.shape[-1] != model["vocab_size"]:
        raise OmniCoderError(
            f"the graph's logits have {logits.shape[-1]} entries, model.vocab_size is {model['vocab_size']}; {FIX}"
        )
    if model["n_mtp"] > 0 and "mtp_logits" not in outputs:
        raise OmniCoderError(f"model.n_mtp is {model['n_mtp']} but the graph has no mtp_logits output; {FIX}")
    mtp = outputs.get("mtp_logits")
    if mtp is not None and len(mtp.shape) == 4 and isinstance(mtp.shape[2], int) and mtp.shape[2] != model["n_mtp"]:
        raise OmniCoderError(f"the graph has {mtp.shape[2]} MTP heads, model.n_mtp is {model['n_mtp']}; {FIX}")
    if model["retention_head"] and "retention" not in outputs:
        raise OmniCoderError(f"model.retention_head is true but the graph has no retention output; {FIX}")
    _check_metadata(bundle, session)


def _check_kv_tensor(value, name: str, width: int, dtype, heads: int) -> None:
    expected, shape = ORT_TYPES.get(str(dtype)), list(value.shape)
    agree = len(shape) == 4 and all(not isinstance(shape[i], int) or shape[i] == v for i, v in ((1, heads), (3, width)))
    if value.type != expected or not agree:  # symbolic dims agree with anything
        raise OmniCoderError(
            f"graph tensor {name} is {value.type} {list(value.shape)}, manifest.json says {expected} "
            f"[batch, {heads}, sequence, {width}]; {FIX}"
        )


def _check_metadata(bundle: Bundle, session: ort.InferenceSession) -> None:
    """The figures an OmniCoder export writes into the graph's metadata_props (absent ones are not checked)."""
    meta = session.get_modelmeta().custom_metadata_map
    model = bundle.model
    for field in METADATA:
        if field in meta and meta[field] != str(model[field]):
            raise OmniCoderError(
                f"manifest.json model.{field} is {model[field]}, the graph says {meta[field][:40]}; {FIX}"
            )
    checks = {
        "omnicoder.attention": model["attention"],
        "kv_dtype": bundle.manifest["precision"]["kv"],
        "omnicoder.kv_io": bundle.graph["kv"].get("io", "present"),
    }
    for key, value in checks.items():
        if key in meta and meta[key] != value:
            raise OmniCoderError(f"manifest.json says {key} {value!r}, the graph says {meta[key][:40]!r}; {FIX}")


def check_allocation(nbytes: int, what: str, fix: str) -> None:
    """Refuse to allocate more than the machine's RAM in one go (a preallocated KV cache)."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # the OS does not say
        return
    if nbytes > ram:
        raise OmniCoderError(
            f"{what} needs {nbytes / 2**20:.0f} MiB, more than this machine's {ram / 2**20:.0f} MiB of RAM; {fix}"
        )
