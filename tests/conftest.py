"""Shared fixtures: tiny random models of both attention kinds."""

from __future__ import annotations

import pytest
import torch

from omnicoder.model import OmniCoder
from omnicoder.presets import gqa_test_config, mla_test_config


@pytest.fixture(params=["gqa", "mla"])
def tiny_model(request) -> OmniCoder:
    torch.manual_seed(0)
    config = gqa_test_config() if request.param == "gqa" else mla_test_config()
    return OmniCoder(config).eval()


def export_bundle(model, out, **options):
    from omnicoder.export.onnx_export import OnnxExportOptions, export_onnx_bundle

    from omnicoder.tokenizer import ByteTokenizer

    return export_onnx_bundle(model, ByteTokenizer().to_json(), out, OnnxExportOptions(**options))


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """Bundles of the tiny random models, exported once per session: name -> (model, bundle dir)."""
    from omnicoder.presets import gqa_test_config, mla_test_config

    root = tmp_path_factory.mktemp("bundles")
    queries = {"query_outputs": True}  # for the tests of predicted pages, H2O and query parity
    variants = {
        "gqa-fp32": (gqa_test_config, {"weights": "fp32", **queries}),
        "mla-fp32": (mla_test_config, {"weights": "fp32", **queries}),
        "gqa-int4": (gqa_test_config, {"weights": "int4"}),  # as shipped: fused, no query outputs
        "mla-int4-mnb": (mla_test_config, {"weights": "int4", "int4_format": "matmulnbits"}),
        "gqa-ortgqa": (gqa_test_config, {"weights": "fp32", "attention": "ort-gqa", **queries}),
        "mla-int8": (mla_test_config, {"weights": "int8"}),
        "gqa-fp16": (gqa_test_config, {"weights": "fp16", **queries}),
        "gqa-u8": (gqa_test_config, {"weights": "fp32", "kv": "u8", **queries}),
        "mla-nf4-had": (mla_test_config, {"weights": "fp32", "kv": "nf4", "kv_rotation": "hadamard", **queries}),
        "gqa-fp32-lean": (gqa_test_config, {"weights": "fp32"}),  # the default graph: fused, no query outputs
        "gqa-fp32-unfused": (gqa_test_config, {"weights": "fp32", "fuse": False, **queries}),
    }
    made = {}
    for name, (make, options) in variants.items():
        torch.manual_seed(0)
        model = OmniCoder(make()).eval()
        reference = OmniCoder(make()).eval()
        reference.load_state_dict(model.state_dict())
        export_bundle(model, root / name, **options)  # quantizes `model` in place for int4/int8
        made[name] = (model, reference, root / name)
    return made


def greedy_onnx(bundle_dir, prompt: list[int], steps: int) -> list[int]:
    """Greedy tokens from a bundle through the ONNX runner's backend, exactly `steps` of them (no EOS stop)."""
    import numpy as np
    from omnicoder.runtimes.bundle import open_bundle
    from omnicoder.runtimes.graph_backend import GraphBackend
    from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

    bundle = open_bundle(bundle_dir)
    backend = GraphBackend(bundle, OnnxProgram(create_session(bundle, threads=1)))
    ids, positions, out = list(prompt), list(range(len(prompt))), []
    for _ in range(steps):
        token = int(np.argmax(backend.step(ids, positions)))
        out.append(token)
        ids, positions = [token], [positions[-1] + 1]
    return out


def quantized_kernels(manifest: dict) -> int:
    """Quantized matmul kernels a bundle's graph should run: one per quantized linear, siblings merged."""
    return manifest["precision"]["quantized_layers"] - manifest["graph"].get("fusions", {}).get("merged_linears", 0)
