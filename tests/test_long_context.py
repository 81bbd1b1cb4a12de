"""Long-context variants: RoPE scaling recorded in the config, graph metadata and manifest; ONNX == PyTorch."""

import json

import numpy as np
import onnx
import pytest
import torch
from omnicoder.runtimes.bundle import open_bundle
from omnicoder.runtimes.graph_backend import GraphBackend
from omnicoder.runtimes.onnx_session import OnnxProgram, create_session

from omnicoder.errors import OmniCoderError
from omnicoder.long_context import extend_context
from omnicoder.model import OmniCoder
from omnicoder.presets import gqa_test_config

from .conftest import export_bundle


@pytest.mark.parametrize("scaling", ["yarn", "linear"])
@torch.no_grad()
def test_extended_export_records_scaling_and_matches_pytorch(scaling, tmp_path):
    torch.manual_seed(0)
    base = OmniCoder(gqa_test_config()).eval()
    long = extend_context(base, 512, scaling)
    assert long.config.max_seq_len == 512 and long.config.rope_scaling.factor == 4.0
    assert not torch.equal(long.rotary.inv_freq, base.rotary.inv_freq)
    export_bundle(long, tmp_path / "b", weights="fp32")
    bundle = open_bundle(tmp_path / "b")
    assert bundle.model["context_length"] == 512
    assert bundle.model["rope"]["scaling"]["type"] == scaling
    assert bundle.model["rope"]["scaling"]["original_max_position_embeddings"] == 128
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "b" / "model.onnx")).metadata_props}
    assert json.loads(meta["rope_scaling"])["factor"] == 4.0 and meta["context_length"] == "512"
    ids = torch.randint(0, 256, (1, 300))  # past the original 128-token context
    expected = long(ids, torch.arange(300)[None]).logits.numpy()
    got = GraphBackend(bundle, OnnxProgram(create_session(bundle))).full_logits(ids.numpy())
    assert np.abs(got - expected).max() <= 1e-4


def test_bad_extensions():
    base = OmniCoder(gqa_test_config())
    with pytest.raises(OmniCoderError, match="not longer"):
        extend_context(base, 64)
    with pytest.raises(OmniCoderError, match="unknown"):
        extend_context(base, 512, "ntk")
    with pytest.raises(OmniCoderError, match="already uses yarn"):
        extend_context(extend_context(base, 512), 1024)
