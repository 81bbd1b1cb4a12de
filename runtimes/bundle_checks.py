"""Cross-checks of a bundle's parts against each other: the manifest's model, KV contract and file names, its
sidecars and its tokenizer. Torch-free. The schemas bound every number; these checks make sure that the numbers
agree, so that no runtime sizes a buffer, a loop or a budget from a field another part contradicts.

The graph itself is checked against the manifest where a session is created (runtimes/graph_checks.py).
"""

from __future__ import annotations

from typing import Any

from omnicoder.runtimes import kv_format

from omnicoder.errors import OmniCoderError

FIX = "re-export the bundle with omnicoder-export"
GRAPH_SUFFIX = {"onnx": ".onnx", "coreml": ".mlpackage", "executorch": ".pte"}
MAX_KV_WIDTH = 65536
MAX_TOKENS = 1 << 24


def _fail(message: str) -> None:
    raise OmniCoderError(f"{message}; {FIX}")


def expected_components(kv_dtype: str, width: int, group: Any) -> list[tuple[str, str, int]]:
    """(suffix, dtype, width) of the tensors storing rows of `width` in `kv_dtype` (as omnicoder.kv_quant)."""
    if kv_dtype in ("fp32", "fp16"):
        return kv_format.components(kv_dtype, width, 0)
    if not isinstance(group, int) or isinstance(group, bool) or group < 2 or group & (group - 1) or width % group:
        _fail(f"manifest.json: KV rows of width {width} cannot use quantization group {group!r}")
    if kv_dtype == "nf4" and width % 2:
        _fail(f"manifest.json: nf4 KV rows need an even width, got {width}")
    return kv_format.components(kv_dtype, width, group)


def _components(storage: dict, side: str) -> list[tuple[str, str, int]]:
    listed = storage.get(f"{side}_components")
    if not isinstance(listed, list):
        _fail(f"manifest.json: graph.kv.storage.{side}_components is missing or not a list")
    parts = []
    for part in listed:
        ok = isinstance(part, dict) and isinstance(part.get("suffix"), str) and isinstance(part.get("dtype"), str)
        width = part.get("width") if isinstance(part, dict) else None
        if not ok or not isinstance(width, int) or isinstance(width, bool):
            _fail(f"manifest.json: graph.kv.storage.{side}_components has a malformed entry")
        parts.append((part["suffix"], part["dtype"], width))
    return parts


def kv_storage(manifest: dict) -> dict:
    """graph.kv.storage, checked against the KV widths and precision.kv ({} for bundles written before it, and for
    Core ML bundles, whose program holds the KV as its state or streams it in its compute precision)."""
    kv = manifest["graph"]["kv"]
    storage = kv.get("storage")
    if manifest["target"] == "coreml":
        return {}
    if storage is None:
        if manifest["precision"]["kv"] != "fp32":
            _fail(f"manifest.json: precision.kv is {manifest['precision']['kv']} but graph.kv has no storage section")
        return {}
    if not isinstance(storage, dict):
        _fail("manifest.json: graph.kv.storage is not an object")
    dtype = storage.get("dtype", "fp32")
    if dtype != manifest["precision"]["kv"]:
        _fail(
            f"manifest.json: graph.kv.storage.dtype {dtype!r} contradicts precision.kv {manifest['precision']['kv']!r}"
        )
    if storage.get("rotation", "none") not in ("none", "hadamard"):
        _fail(f"manifest.json: graph.kv.storage.rotation {storage.get('rotation')!r} is unknown")
    if storage.get("rotation", "none") == "hadamard" and dtype not in ("u8", "nf4"):
        _fail("manifest.json: a hadamard KV rotation needs u8 or nf4 KV")
    sides = [("key", kv["key_dim"])] + ([("value", kv["value_dim"])] if kv.get("past_value") else [])
    for side, width in sides:
        want = expected_components(dtype, width, storage.get(f"{side}_group"))
        got = _components(storage, side)
        if got != want:
            _fail(f"manifest.json: graph.kv.storage.{side}_components {got} do not store {dtype} rows of width {width}")
    return storage


def kv_bytes_per_token_per_layer(manifest: dict) -> int:
    """Stored KV bytes of one token in one layer, from the manifest's KV contract (checked first)."""
    kv_storage(manifest)
    return kv_format.KVLayout(manifest["graph"]["kv"], 1).bytes_per_token()


def check_manifest(manifest: dict) -> None:
    """The manifest's model and KV contract agree with each other (the graph file with the target: check_target)."""
    model, graph, kv = manifest["model"], manifest["graph"], manifest["graph"]["kv"]
    target = manifest["target"]
    for name in ("bos_id", "eos_id", "pad_id"):
        if model[name] >= model["vocab_size"]:
            _fail(f"manifest.json: model.{name} {model[name]} is outside the vocabulary ({model['vocab_size']})")
    if model["attention"] == "gqa":
        expect = {"kind": "gqa", "heads": model["n_kv_heads"], "key_dim": model["head_dim"]}
        expect["value_dim"] = model["head_dim"]
        if model["n_heads"] % model["n_kv_heads"]:
            _fail(f"manifest.json: model.n_heads {model['n_heads']} is not a multiple of n_kv_heads")
        if not kv.get("past_value") or not kv.get("present_value"):
            _fail("manifest.json: a gqa model's graph.kv needs past_value and present_value names")
    else:
        expect = {"kind": "mla-latent", "heads": 1, "key_dim": model["kv_latent_dim"] + model["rope_head_dim"]}
        expect["value_dim"] = 0
        if model["kv_latent_dim"] < 1 or kv.get("past_value") or kv.get("present_value"):
            _fail("manifest.json: an mla model needs kv_latent_dim > 0 and no value tensors in graph.kv")
    for field, value in expect.items():
        if kv[field] != value:
            _fail(f"manifest.json: graph.kv.{field} is {kv[field]!r} but the model implies {value!r}")
    if kv["key_dim"] > MAX_KV_WIDTH:
        _fail(f"manifest.json: graph.kv.key_dim {kv['key_dim']} is over {MAX_KV_WIDTH}")
    names = [kv[k] for k in ("past_key", "past_value", "present_key", "present_value", "query") if kv.get(k)]
    if target == "onnx" and len(set(names)) != len(names):
        _fail("manifest.json: graph.kv names the same tensor twice")
    if kv.get("io") == "shared" and target != "onnx":
        _fail("manifest.json: graph.kv.io 'shared' is only written for onnx bundles")
    if kv.get("io") == "shared" and graph.get("attention_op", "GroupQueryAttention") != "GroupQueryAttention":
        _fail(f"manifest.json: graph.kv.io 'shared' needs GroupQueryAttention, not {graph.get('attention_op')!r}")
    kv_storage(manifest)
    if target == "onnx" and graph["file"].endswith(".onnx"):  # a mislabeled graph is check_target's to name
        _check_tensor_list(manifest)


def check_target(manifest: dict) -> None:
    """The graph is what `target` says (checked where the target decides what happens: a runner, the apps):
    an .onnx file, a .pte program with its graph.executorch section, or an .mlpackage with a Manifest.json."""
    target, graph = manifest["target"], manifest["graph"]
    if not graph["file"].endswith(GRAPH_SUFFIX[target]):
        suffix = GRAPH_SUFFIX[target]
        _fail(f"manifest.json: target {target!r} needs a graph file ending in {suffix}, not {graph['file']!r}")
    if target == "coreml" and f"{graph['file']}/Manifest.json" not in manifest["files"]:
        _fail(f"manifest.json: a coreml bundle's graph {graph['file']!r} must be an .mlpackage with a Manifest.json")
    if target != "executorch":
        return
    section = manifest["graph"].get("executorch")
    if not isinstance(section, dict) or section.get("kv_mode") not in ("buffer", "io"):
        _fail("manifest.json: an executorch bundle needs graph.executorch with kv_mode 'buffer' or 'io'")
    length = section.get("max_seq_len")
    if not isinstance(length, int) or isinstance(length, bool) or not 2 <= length <= MAX_TOKENS:
        _fail(f"manifest.json: graph.executorch.max_seq_len must be a token count from 2 to {MAX_TOKENS}")


def _check_tensor_list(manifest: dict) -> None:
    """graph.inputs / outputs, where listed, name the KV tensors with their widths."""
    graph, kv = manifest["graph"], manifest["graph"]["kv"]
    listed = {t["name"]: t for t in graph["inputs"]}
    if not listed:
        return
    layers = manifest["model"]["n_layers"]
    past = [n for n in listed if n not in ("input_ids", "position_ids")]
    kv_storage(manifest)  # checked before the layout reads it
    layout = kv_format.KVLayout(kv, layers)
    widths = {n: (str(d), w) for n, w, d in zip(layout.inputs, layout.widths, layout.dtypes, strict=True)}
    if set(past) != set(widths):
        missing = sorted(set(widths) - set(past))[:2] or sorted(set(past) - set(widths))[:2]
        _fail(f"manifest.json: graph.inputs do not match graph.kv and model.n_layers {layers} (e.g. {missing})")
    for name, (dtype, width) in widths.items():
        shape = listed[name]["shape"]
        if listed[name]["dtype"] != dtype or len(shape) != 4 or shape[1] != kv["heads"] or shape[3] != width:
            _fail(f"manifest.json: graph input {name} is {listed[name]['dtype']} {shape}, graph.kv implies {dtype}")


def check_paging(manifest: dict, sidecar: dict, name: str) -> None:
    """model.kv_paging.json describes the manifest's model and KV storage."""
    model, kv = manifest["model"], manifest["graph"]["kv"]
    mla = model["attention"] == "mla"
    expect = {
        "n_layers": model["n_layers"],
        "key_dim": kv["key_dim"],
        "value_dim": kv["value_dim"],
        "rope_dim": model["rope_head_dim"] if mla else 0,
        "context_length": model["context_length"],
    }
    if manifest["target"] != "coreml":  # Core ML: the sidecar describes the runner-side (fp32) KV rows
        expect["kv_dtype"] = manifest["precision"]["kv"]
        expect["bytes_per_token_per_layer"] = kv_bytes_per_token_per_layer(manifest)
    for field, value in expect.items():
        if field in sidecar and sidecar[field] != value:
            _fail(f"{name}: {field} is {sidecar[field]!r} but manifest.json implies {value!r}")
    dl = model["kv_latent_dim"] if mla else model["head_dim"]
    per_layer = {"heads": kv["heads"], "dl": dl}
    for field, value in per_layer.items():
        values = sidecar.get(f"{field}_per_layer", [sidecar.get(field)] * model["n_layers"])
        if len(values) != model["n_layers"] or any(v != value for v in values):
            _fail(f"{name}: {field} does not match manifest.json ({value} in each of {model['n_layers']} layers)")
    if sidecar["page_len"] > model["context_length"]:
        _fail(f"{name}: page_len {sidecar['page_len']} is longer than the context ({model['context_length']})")


def check_retention(manifest: dict, sidecar: dict, name: str) -> None:
    """model.retention.json fits the model's context."""
    context = manifest["model"]["context_length"]
    for field in ("sink_tokens", "recent_window"):
        if sidecar[field] > context:
            _fail(f"{name}: {field} {sidecar[field]} is longer than the context ({context})")
    if sidecar["compress"]["dtype"] != "none" and sidecar["compress"]["bytes_per_token"] < 1:
        _fail(f"{name}: compress.bytes_per_token must be > 0 for {sidecar['compress']['dtype']}")


SIDECAR_CHECKS = {"kv_paging": check_paging, "retention": check_retention}


def check_byte_tokenizer(manifest: dict, spec: Any, name: str) -> None:
    """An omnicoder-byte tokenizer.json has the manifest's vocabulary size and special ids."""
    model = manifest["model"]
    special = spec.get("special_tokens") if isinstance(spec, dict) else None
    if not isinstance(special, dict) or spec.get("vocab_size") != model["vocab_size"]:
        _fail(f"{name}: the byte tokenizer's vocab_size does not match model.vocab_size {model['vocab_size']}")
    for key, field in (("bos", "bos_id"), ("eos", "eos_id"), ("pad", "pad_id")):
        if special.get(key) != model[field]:
            _fail(f"{name}: special token {key} is {special.get(key)!r}, model.{field} is {model[field]}")
    if model["vocab_size"] < 256:
        _fail(f"{name}: a byte tokenizer needs a vocabulary of at least 256 ids")
