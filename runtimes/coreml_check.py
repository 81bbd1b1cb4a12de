"""Check a Core ML bundle's MIL program on any OS: op inventory, states, int4 weights, metadata. Torch-free.

    python -m omnicoder.runtimes.coreml_check --bundle DIR [--json]

Core ML predicts only on macOS, but the saved program (protobuf) can be read anywhere. Per function it asserts:
one `scaled_dot_product_attention` per layer (iOS18; iOS17 decomposes it), the KV states read and written with one
cache update per layer (state mode), the KV inputs/outputs of the manifest (stream mode), every linear's weight an
int4 `constexpr_blockwise_shift_scale` with blocks of 32 except the LM head / retention head (int4 mode; a
quantized LM head may be 8-bit and the embedding's gather may read a constexpr table), no
constexpr weights at all (fp16 mode), and the user_defined_metadata. Prints the inventory; exits 1 on a violation.
Reads the protobuf classes shipped in coremltools without importing coremltools itself (which imports torch).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

from omnicoder.cliutil import ArgumentParser
from omnicoder.errors import OmniCoderError, cli_main

REQUIRED_METADATA = (
    *("omnicoder.bundle_format_version", "omnicoder.kv_mode", "omnicoder.weights", "rope_theta", "rope_scaling"),
    *("n_layers", "n_heads", "n_kv_heads", "head_dim", "kv_latent_dim", "context_length", "max_seq_len"),
)
SPEC_VERSIONS = {"iOS17": 8, "iOS18": 9}  # the newest Core ML specification version each OS loads
_PROTO_ALIAS = "_omnicoder_coreml_proto"


def proto_modules():
    """(Model_pb2, MIL_pb2) from coremltools' generated protobuf code, without running coremltools/__init__."""
    if "coremltools.proto.Model_pb2" in sys.modules:
        return sys.modules["coremltools.proto.Model_pb2"], sys.modules["coremltools.proto.MIL_pb2"]
    if f"{_PROTO_ALIAS}.Model_pb2" not in sys.modules:
        found = importlib.util.find_spec("coremltools")
        if found is None or not found.submodule_search_locations:
            raise OmniCoderError("checking a Core ML bundle needs coremltools; pip install 'omnicoder[coreml]'")
        proto_dir = Path(list(found.submodule_search_locations)[0]) / "proto"
        spec = importlib.util.spec_from_file_location(
            _PROTO_ALIAS, proto_dir / "__init__.py", submodule_search_locations=[str(proto_dir)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PROTO_ALIAS] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{_PROTO_ALIAS}.Model_pb2"), importlib.import_module(f"{_PROTO_ALIAS}.MIL_pb2")


def read_spec(package: Path):
    """The Model protobuf of an .mlpackage directory (its Manifest.json names the root model file)."""
    model_pb2, _ = proto_modules()
    try:
        manifest = json.loads((package / "Manifest.json").read_text())
        entry = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
        data = (package / "Data" / entry["path"]).read_bytes()
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise OmniCoderError(f"{package} is not a readable .mlpackage ({exc}); re-export the bundle") from None
    spec = model_pb2.Model()
    spec.ParseFromString(data)
    return spec


# ---- one function's inventory ------------------------------------------------------------------------------


def _operations(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _operations(inner)


def _names(op, param: str) -> list[str]:
    return [b.name for b in op.inputs[param].arguments if b.name] if param in op.inputs else []


def _value_type(op, param: str, producers: dict):
    """The tensor type of an op input: inline value, or the output of the op that produces it."""
    binding = op.inputs[param].arguments[0]
    if binding.name:
        producer = producers.get(binding.name)
        if producer is None:
            return None
        return next(o.type.tensorType for o in producer.outputs if o.name == binding.name)
    return binding.value.type.tensorType


def _dims(tensor_type) -> list[int | None]:
    return [d.constant.size if d.HasField("constant") else None for d in tensor_type.dimensions]


def _weight_kind(linear, producers: dict, mil_pb2, vocab: int) -> tuple[str, str, int | None]:
    """(kind, weight name, block size): kind is int4 | fp16-lm-head | fp16-retention | float | other."""
    name = _names(linear, "weight")[0] if _names(linear, "weight") else ""
    producer = producers.get(name)
    if producer is None:
        return "other", name, None
    if producer.type == "constexpr_blockwise_shift_scale":
        data, scale = _value_type(producer, "data", producers), _value_type(producer, "scale", producers)
        dtype = mil_pb2.DataType.Name(data.dataType) if data is not None else "?"
        block = None
        if data is not None and scale is not None:
            k, groups = _dims(data)[-1], _dims(scale)[-1]
            block = k // groups if k and groups else None
        return ("int4" if dtype in ("INT4", "UINT4") else f"constexpr-{dtype.lower()}"), name, block
    if producer.type == "const":
        out = _dims(producer.outputs[0].type.tensorType)
        if out and out[0] == vocab:
            return "fp16-lm-head", name, None
        if "retention" in name:
            return "fp16-retention", name, None
        return "float", name, None
    return "other", name, None


def _chain_updates(write, state: str, producers: dict) -> int | None:
    """Cache updates (slice_update) between read_state(state) and write_state(state), or None if not connected."""
    count, names = 0, _names(write, "data")
    while names:
        op = producers.get(names[0])
        if op is None:
            return None
        if op.type == "read_state":
            return count if _names(op, "input") == [state] else None
        if op.type == "slice_update":
            count += 1
        elif op.type not in ("cast", "identity", "mul"):
            return None
        names = _names(op, "x")
    return None


def function_inventory(function, mil_pb2, vocab: int) -> dict:
    block = function.block_specializations[function.opset]
    ops = list(_operations(block))
    producers = {o.name: op for op in ops for o in op.outputs}
    linears = [_weight_kind(op, producers, mil_pb2, vocab) for op in ops if op.type == "linear"]
    states = [i.name for i in function.inputs if i.type.WhichOneof("type") == "stateType"]
    writes = {}
    for op in ops:
        if op.type == "write_state":
            target = _names(op, "input")[0]
            writes[target] = writes.get(target, []) + [_chain_updates(op, target, producers)]
    reads = Counter(_names(op, "input")[0] for op in ops if op.type == "read_state")
    constexpr_users = Counter(
        user.type for user in ops for param in user.inputs for n in _names(user, param)
        if producers.get(n) is not None and producers[n].type.startswith("constexpr_")
    )  # fmt: skip
    return {
        "opset": function.opset,
        "inputs": [i.name for i in function.inputs if i.type.WhichOneof("type") != "stateType"],
        "states": states,
        "outputs": list(block.outputs),
        "ops": dict(sorted(Counter(op.type for op in ops).items())),
        "sdpa": sum(op.type == "scaled_dot_product_attention" for op in ops),
        "softmax": sum(op.type == "softmax" for op in ops),
        "linears": Counter(kind for kind, _, _ in linears),
        "int4_blocks": sorted({b for kind, _, b in linears if kind == "int4" and b}),
        "float_linears": [name for kind, name, _ in linears if kind in ("float", "other")],
        "constexpr_users": dict(constexpr_users),
        "state_reads": dict(reads),
        "state_writes": {k: len(v) for k, v in writes.items()},
        "state_updates": {k: v[0] if len(v) == 1 else None for k, v in writes.items()},
    }


# ---- the bundle check ------------------------------------------------------------------------------------


def _check_function(name: str, inv: dict, manifest: dict) -> list[str]:
    model, coreml = manifest["model"], manifest["graph"]["coreml"]
    layers, weights = model["n_layers"], manifest["precision"]["weights"]
    bad = []
    if coreml["deployment_target"] == "iOS18":
        expected = layers - coreml.get("softcapped_layers", 0)  # soft-capped layers attend without SDPA
        if inv["sdpa"] != expected:
            what = "one per layer" if expected == layers else f"{expected} (soft-capped layers attend without it)"
            bad.append(f"{name}: {inv['sdpa']} scaled_dot_product_attention ops, expected {what} ({layers})")
    elif inv["sdpa"]:
        bad.append(f"{name}: scaled_dot_product_attention in an iOS17 program")
    expected_in = [t["name"] for t in coreml["inputs"][name]]
    expected_out = [t["name"] for t in coreml["outputs"][name]]
    if inv["inputs"] != expected_in:
        bad.append(f"{name}: inputs {inv['inputs']} differ from the manifest's {expected_in}")
    if inv["outputs"] != expected_out:
        bad.append(f"{name}: outputs {inv['outputs']} differ from the manifest's {expected_out}")
    if weights == "int4":
        if inv["float_linears"]:
            bad.append(f"{name}: float linear weights left in an int4 program: {', '.join(inv['float_linears'])}")
        if not inv["linears"].get("int4"):
            bad.append(f"{name}: no int4 linear weights in an int4 program")
        if inv["int4_blocks"] not in ([], [32]):
            bad.append(f"{name}: int4 block sizes {inv['int4_blocks']}, expected 32")
        if set(inv["constexpr_users"]) - {"linear", "gather"}:  # gather: a quantized embedding
            bad.append(f"{name}: constexpr weights feed {sorted(inv['constexpr_users'])}, not only linears/gather")
    elif inv["constexpr_users"]:
        bad.append(f"{name}: constexpr (compressed) weights in an fp16 program")
    if coreml["kv_mode"] == "state":
        bad += _check_states(name, inv, model)
    return bad


def _check_states(name: str, inv: dict, model: dict) -> list[str]:
    bad = []
    if sorted(inv["states"]) != ["keyCache", "valueCache"]:
        return [f"{name}: states {inv['states']}, expected keyCache and valueCache"]
    per_layer = {"keyCache": model["n_layers"], "valueCache": model["n_layers"] if model["attention"] == "gqa" else 0}
    for state, expected in per_layer.items():
        if inv["state_reads"].get(state, 0) < 1 or inv["state_writes"].get(state, 0) != 1:
            bad.append(f"{name}: {state} is not read and written back once per step")
        elif inv["state_updates"].get(state) != expected:
            got = inv["state_updates"].get(state)
            bad.append(f"{name}: {state} gets {got} cache updates per step, expected {expected} (one per layer)")
    return bad


def _check_metadata(metadata: dict, manifest: dict) -> list[str]:
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        return [f"user_defined_metadata lacks {', '.join(missing)}"]
    model = manifest["model"]
    expected = {"n_layers": model["n_layers"], "n_heads": model["n_heads"], "n_kv_heads": model["n_kv_heads"]}
    expected["omnicoder.weights"] = manifest["precision"]["weights"]
    expected["omnicoder.kv_mode"] = manifest["graph"]["coreml"]["kv_mode"]
    return [
        f"metadata {k}={metadata[k]!r}, the manifest says {v!r}" for k, v in expected.items() if metadata[k] != str(v)
    ]


def check_coreml_bundle(bundle) -> dict:
    """Inventory + violations of a coreml bundle (a Bundle or a directory); report["passed"] is the verdict."""
    from omnicoder.runtimes.bundle import Bundle, open_bundle

    if not isinstance(bundle, Bundle):
        bundle = open_bundle(bundle)
    manifest = bundle.manifest
    if manifest["target"] != "coreml":
        raise OmniCoderError(f"{bundle.path} is a {manifest['target']} bundle; the Core ML checker reads coreml ones")
    if not isinstance(manifest["graph"].get("coreml"), dict) or "packages" not in manifest["graph"]["coreml"]:
        raise OmniCoderError(f"{bundle.path}: manifest.json has no graph.coreml section; re-export the bundle")
    _, mil_pb2 = proto_modules()
    coreml, vocab = manifest["graph"]["coreml"], manifest["model"]["vocab_size"]
    violations, functions, metadata, specs = [], {}, {}, {}
    for name in coreml["functions"]:
        entry = coreml["packages"][name]
        if entry["file"] not in specs:
            specs[entry["file"]] = read_spec(bundle.file(entry["file"]))
            metadata = dict(specs[entry["file"]].description.metadata.userDefined)
            violations += [f"{entry['file']}: {v}" for v in _check_metadata(metadata, manifest)]
            version, target = specs[entry["file"]].specificationVersion, coreml["deployment_target"]
            if version > SPEC_VERSIONS.get(target, version):
                violations.append(f"{entry['file']} is Core ML spec {version}: it does not load on {target}")
        found = specs[entry["file"]].mlProgram.functions
        if entry["function"] not in found:
            violations.append(f"{entry['file']} has no function {entry['function']!r} (it has {sorted(found)})")
            continue
        functions[name] = function_inventory(found[entry["function"]], mil_pb2, vocab)
        violations += _check_function(name, functions[name], manifest)
    listed = {(e["file"], e["function"]) for e in coreml["packages"].values()}
    stray = sorted(
        f"{file}:{f}" for file, spec in specs.items() for f in spec.mlProgram.functions if (file, f) not in listed
    )
    if stray:
        violations.append(f"functions not in the manifest: {', '.join(stray)}")
    return {
        "bundle": str(bundle.path),
        "passed": not violations,
        "violations": violations,
        "kv_mode": manifest["graph"]["coreml"]["kv_mode"],
        "deployment_target": manifest["graph"]["coreml"]["deployment_target"],
        "weights": manifest["precision"]["weights"],
        "functions": {n: {**inv, "linears": dict(inv["linears"])} for n, inv in functions.items()},
        "metadata": metadata,
    }


# ---- the provider bench's view -----------------------------------------------------------------------------

STATIC_PROVIDER = "CoreMLProgram"  # the saved MIL program, checked statically (prediction needs macOS)


def available_providers() -> list[str]:
    return [STATIC_PROVIDER]


def canonical_provider(name: str) -> str:
    return STATIC_PROVIDER


def bench_provider(bundle, provider: str, entry=None, settings=None, graphs_dir=None, level: str = "all"):
    """A ProviderResult for omnicoder-bench: the inventory as checks, no timing (result.speed is None)."""
    from omnicoder.runtimes.bench_result import Check, ProviderResult

    report = check_coreml_bundle(bundle)
    layers = bundle.model["n_layers"]
    ops: Counter = Counter()
    checks = []
    for name, inv in report["functions"].items():
        ops.update({f"{name}/{op}": n for op, n in inv["ops"].items()})
        if report["deployment_target"] == "iOS18":
            expected = layers - bundle.graph["coreml"].get("softcapped_layers", 0)  # those attend without SDPA
            note = f"one per layer ({layers})" if expected == layers else f"{expected} of {layers} layers (soft-capped)"
            checks.append(Check(provider, f"{name}: scaled_dot_product_attention ops", inv["sdpa"], expected, note))
        if report["weights"] == "int4":
            note = "linear layers with int4 constexpr_blockwise_shift_scale weights (LM/retention heads stay fp16)"
            checks.append(Check(provider, f"{name}: int4 linear weights", inv["linears"].get("int4", 0), 1, note))
    note = "; ".join(report["violations"]) or "I/O, KV states, weights and metadata as the manifest says"
    checks.append(Check(provider, "Core ML program checks", float(report["passed"]), 1.0, note))
    result = ProviderResult(provider, "measured", ops=dict(sorted(ops.items())), inventory_source="saved MIL program")
    result.checks = checks
    return result


def print_report(report: dict) -> None:
    print(f"{report['bundle']}: Core ML {report['deployment_target']}, KV {report['kv_mode']}, {report['weights']}")
    for name, inv in report["functions"].items():
        print(f"  function {name} ({inv['opset']}): {sum(inv['ops'].values())} ops")
        print(f"    inputs {', '.join(inv['inputs'])}; states {', '.join(inv['states']) or '-'}")
        print(f"    scaled_dot_product_attention {inv['sdpa']}, softmax {inv['softmax']}")
        print(f"    linear weights {inv['linears']}, int4 blocks {inv['int4_blocks'] or '-'}")
        if inv["states"]:
            print(f"    state reads {inv['state_reads']}, writes {inv['state_writes']}, updates {inv['state_updates']}")
    print(f"  metadata: {', '.join(k for k in report['metadata'] if not k.startswith('com.github'))}")
    for line in report["violations"]:
        print(f"  VIOLATION: {line}")
    print("PASS" if report["passed"] else f"FAIL ({len(report['violations'])} violations)")


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="omnicoder-coreml-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle directory written by omnicoder-export --target coreml")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    report = check_coreml_bundle(args.bundle)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
