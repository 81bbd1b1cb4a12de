"""Sparse mixture-of-experts in the model core (issue #21): routing per gating, the three forms (loop / gather /
dense) agree, a written-out reference, decode == full forward with MLA + MoE, the load-balancing loss in training,
presets, config validation, and dense models unchanged."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError
from omnicoder.model import OmniCoder
from omnicoder.moe import (
    MoEFeedForward,
    active_parameters,
    load_balancing_loss,
    moe_aux_loss,
    moe_layers,
    set_moe_form,
    update_score_bias,
)
from omnicoder.presets import preset
from omnicoder.train import training_loss

BASE = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_hidden=48, max_seq_len=64)
MOE = dict(moe_experts=8, moe_top_k=2, moe_hidden=16)
GATINGS = {
    "softmax": dict(),
    "softmax-norm-shared-gate": dict(moe_norm_topk=True, moe_shared_hidden=24, moe_shared_gate=True),
    "topk_softmax": dict(moe_gating="topk_softmax"),
    "sigmoid-groups": dict(
        moe_gating="sigmoid",
        moe_norm_topk=True,
        moe_score_bias=True,
        moe_routed_scale=2.5,
        moe_n_group=4,
        moe_topk_group=2,
        moe_shared_hidden=16,
    ),
    "softmax-groups-v2": dict(moe_n_group=2, moe_topk_group=1, moe_routed_scale=1.5),
}


def moe_config(**changes) -> OmniCoderConfig:
    return OmniCoderConfig(**{**BASE, **MOE, **changes}).validate()


def _layer(changes: dict, seed: int = 0) -> MoEFeedForward:
    torch.manual_seed(seed)
    layer = MoEFeedForward(moe_config(**changes)).eval()
    with torch.no_grad():  # wider than the init, so the routing and the bias matter
        for param in layer.parameters():
            param.normal_(0, 0.3)
        if layer.router.score_bias is not None:
            layer.router.score_bias.uniform_(-0.1, 0.1)
    return layer


def _reference(layer: MoEFeedForward, x: torch.Tensor, c: OmniCoderConfig) -> torch.Tensor:
    """Written out per token from the definitions (no shared code with omnicoder.moe beyond the weights)."""
    out = torch.zeros_like(x)
    bank = layer.experts
    for n in range(x.shape[0]):
        logits = layer.router.weight @ x[n]
        if c.moe_gating == "topk_softmax":
            top, ids = logits.topk(c.moe_top_k)
            weights = torch.softmax(top, dim=0)
        else:
            scores = torch.sigmoid(logits) if c.moe_gating == "sigmoid" else torch.softmax(logits, dim=0)
            choice = scores + (layer.router.score_bias if c.moe_score_bias else 0)
            if c.moe_n_group > 1:
                groups = choice.view(c.moe_n_group, -1)
                rank = groups.topk(2, dim=1).values.sum(1) if c.moe_gating == "sigmoid" else groups.max(1).values
                allowed = torch.zeros(c.moe_n_group, dtype=torch.bool)
                allowed[rank.topk(c.moe_topk_group).indices] = True
                choice = torch.where(allowed.repeat_interleave(groups.shape[1]), choice, -torch.inf)
            ids = choice.topk(c.moe_top_k).indices
            weights = scores[ids]
            if c.moe_norm_topk:
                weights = weights / weights.sum()
        weights = weights * c.moe_routed_scale
        for w, e in zip(weights, ids, strict=True):
            h = F.silu(bank.gate_proj[e] @ x[n]) * (bank.up_proj[e] @ x[n])
            out[n] += w * (bank.down_proj[e] @ h)
        if c.moe_shared_hidden:
            shared = layer.shared(x[n : n + 1])[0]
            if c.moe_shared_gate:
                shared = torch.sigmoid(layer.shared_gate.weight @ x[n]) * shared
            out[n] += shared
    return out


@pytest.mark.parametrize("gating", list(GATINGS))
def test_forms_match_the_written_out_reference(gating):
    layer = _layer(GATINGS[gating])
    x = torch.randn(1, 12, 32)
    expected = _reference(layer, x[0], layer_config := moe_config(**GATINGS[gating]))
    assert layer_config.moe_experts == 8
    with torch.no_grad():
        for form in ("loop", "gather", "dense", "auto"):
            layer.form = form
            got = layer(x)[0]
            assert (got - expected).abs().max().item() < 1e-5, form


def test_auto_form_is_gather_in_decode_and_loop_in_prefill(monkeypatch):
    layer = _layer({})
    used = []
    for name in ("gathered", "all_experts", "expert"):
        original = getattr(layer.experts, name)
        monkeypatch.setattr(layer.experts, name, lambda *a, _o=original, _n=name: used.append(_n) or _o(*a))
    with torch.no_grad():
        layer(torch.randn(1, 1, 32))
        assert used == ["gathered"]
        used.clear()
        layer(torch.randn(1, 16, 32))
    assert used and set(used) == {"expert"}


def test_invalid_form_is_refused():
    layer = _layer({})
    with pytest.raises(ValueError, match="unknown MoE form"):
        layer.routed(torch.randn(2, 32), layer.router(torch.randn(2, 32)), "sparse")
    with pytest.raises(ValueError, match="unknown MoE form"):
        set_moe_form(layer, "sparse")


def test_mla_moe_decode_step_by_step_equals_full_forward():
    """Our architecture aim: MLA + MoE (test-moe preset); decode one token at a time == one full forward."""
    torch.manual_seed(0)
    model = OmniCoder(preset("test-moe")).eval()
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        full = model(ids, torch.arange(10).expand(2, 10)).logits
        past, steps = None, []
        for t in range(10):
            out = model(ids[:, t : t + 1], torch.full((2, 1), t), past)
            past = [
                (new if old is None else (torch.cat((old[0], new[0]), 2), torch.cat((old[1], new[1]), 2)))
                for old, new in zip(past or [None] * len(out.new_kv), out.new_kv, strict=True)
            ]
            steps.append(out.logits)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-5
    assert [type(layer.mlp).__name__ for layer in model.layers] == ["GatedMLP", "MoEFeedForward"]


def test_dense_form_for_the_whole_model_matches_auto():
    torch.manual_seed(1)
    model = OmniCoder(moe_config(**GATINGS["sigmoid-groups"])).eval()
    ids = torch.randint(0, 256, (1, 9))
    positions = torch.arange(9).expand(1, 9)
    with torch.no_grad():
        auto = model(ids, positions).logits
        set_moe_form(model, "dense")
        dense = model(ids, positions).logits
    assert (auto - dense).abs().max().item() < 1e-5
    assert len(moe_layers(model)) == 2


def test_load_balancing_loss_is_one_when_uniform_and_e_when_collapsed():
    e, n = 4, 8
    uniform = torch.full((n, e), 1 / e)
    balanced_ids = torch.arange(n * 2).remainder(e).view(n, 2)
    assert load_balancing_loss(uniform, balanced_ids, e).item() == pytest.approx(1.0)
    collapsed = torch.zeros(n, e)
    collapsed[:, 0] = 1
    assert load_balancing_loss(collapsed, torch.zeros(n, 1, dtype=torch.long), e).item() == pytest.approx(e)


def test_training_loss_adds_the_aux_loss_and_it_has_gradients():
    torch.manual_seed(0)
    model = OmniCoder(moe_config(moe_aux_loss_coef=0.5)).train()
    batch = torch.randint(0, 256, (2, 9))
    total, lm = training_loss(model, batch, 8, 0.0)
    aux = moe_aux_loss(model)
    assert aux is not None and aux.item() >= 1.0 - 1e-4
    assert total.item() == pytest.approx(lm.item() + 0.5 * aux.item(), rel=1e-5)
    total.backward()
    assert model.layers[0].mlp.router.weight.grad.abs().sum() > 0
    assert model.layers[1].mlp.experts.down_proj.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        model(batch[:, :4], torch.arange(4).expand(2, 4))
    assert moe_aux_loss(model) is None  # only training forwards record it


def test_score_bias_update_favours_the_underloaded_experts():
    torch.manual_seed(0)
    model = OmniCoder(moe_config(**GATINGS["sigmoid-groups"])).train()
    model(torch.randint(0, 256, (2, 16)), torch.arange(16).expand(2, 16))
    layer = moe_layers(model)[0]
    load = layer.expert_load.float()
    update_score_bias(model, 0.01)
    bias = layer.router.score_bias
    assert torch.all(bias[load < load.mean()] > 0) and torch.all(bias[load > load.mean()] < 0)
    assert int(layer.expert_load.sum()) == 2 * 16 * 2


def test_presets_and_active_parameters():
    big = preset("random-moe-100m")
    model = OmniCoder(big)
    assert 95e6 <= model.num_parameters() <= 105e6
    assert 22e6 <= active_parameters(model) <= 28e6
    assert big.attention == "mla" and big.is_moe_layer(1) and not big.is_moe_layer(0)
    small = OmniCoder(preset("test-moe"))
    assert small.num_parameters() < 200_000


def test_dense_configs_are_unchanged():
    """moe_experts 0: every layer keeps its GatedMLP with the same tensor names as before #21."""
    model = OmniCoder(preset("test-gqa"))
    assert not moe_layers(model)
    assert {k for k in model.state_dict() if ".mlp." in k} == {
        f"layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("gate", "up", "down")
    }
    old = {k: v for k, v in OmniCoderConfig().to_dict().items() if not k.startswith("moe_")}
    assert OmniCoderConfig.from_dict(old).moe_experts == 0


def test_moe_config_round_trip(tmp_path):
    config = moe_config(**GATINGS["sigmoid-groups"], moe_dense_layers=[0])
    config.save(tmp_path / "config.json")
    loaded = OmniCoderConfig.load(tmp_path / "config.json")
    assert json.loads(loaded.to_json()) == config.to_dict()
    assert loaded.is_moe_layer(1) and not loaded.is_moe_layer(0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"moe_experts": 0, "moe_top_k": 2}, "moe_top_k is set but moe_experts is 0"),
        ({"moe_top_k": 9}, "moe_top_k must be in"),
        ({"moe_top_k": 0}, "moe_top_k must be in"),
        ({"moe_hidden": 0}, "moe_hidden must be > 0"),
        ({"moe_gating": "relu"}, "moe_gating 'relu' is unknown"),
        ({"moe_routed_scale": 0.0}, "moe_routed_scale must be > 0"),
        ({"moe_shared_gate": True}, "moe_shared_gate needs a shared expert"),
        ({"moe_n_group": 3, "moe_topk_group": 1}, "must divide moe_experts"),
        ({"moe_n_group": 4, "moe_topk_group": 0}, "moe_topk_group must be in"),
        ({"moe_n_group": 8, "moe_topk_group": 1, "moe_top_k": 2}, "keep at least moe_top_k"),
        ({"moe_n_group": 8, "moe_topk_group": 4, "moe_gating": "sigmoid"}, "groups of at least 2"),
        ({"moe_topk_group": 2}, "moe_topk_group needs moe_n_group > 1"),
        ({"moe_dense_layers": [2]}, "moe_dense_layers entry 2"),
        ({"moe_dense_layers": [0, 0]}, "lists a layer twice"),
        ({"moe_experts": True}, "moe_experts must be of type int"),
    ],
)
def test_bad_moe_configs_are_refused(changes, message):
    with pytest.raises(OmniCoderError, match=message):
        moe_config(**changes)


@pytest.mark.parametrize("form", ["gather", "dense"])
def test_gather_and_dense_forms_trace_with_a_dynamic_sequence(form):
    """The exporters' seam: both forms trace with torch.export (standard ops, no data-dependent shapes)."""
    layer = _layer(GATINGS["sigmoid-groups"])
    layer.form = form
    seq = torch.export.Dim("seq", min=1, max=64)
    program = torch.export.export(layer, (torch.randn(1, 5, 32),), dynamic_shapes=({1: seq},), strict=False)
    x = torch.randn(1, 9, 32)
    with torch.no_grad():
        expected = layer(x)
    assert (program.module()(x) - expected).abs().max().item() < 1e-5


def test_save_and_load_keep_the_experts_and_the_choice_bias(tmp_path):
    from omnicoder.weights import load_model, save_model

    torch.manual_seed(0)
    model = OmniCoder(moe_config(**GATINGS["sigmoid-groups"])).eval()
    with torch.no_grad():
        moe_layers(model)[0].router.score_bias.uniform_(-0.1, 0.1)
    save_model(model, tmp_path / "moe")
    loaded = load_model(tmp_path / "moe")
    ids = torch.randint(0, 256, (1, 7))
    positions = torch.arange(7).expand(1, 7)
    with torch.no_grad():
        assert (model(ids, positions).logits - loaded(ids, positions).logits).abs().max().item() < 1e-6
    assert torch.allclose(moe_layers(loaded)[0].router.score_bias, moe_layers(model)[0].router.score_bias)
