import json
from pathlib import Path

import pytest
import torch

from omnicoder.data import find_corpus, is_heldout, read_documents
from omnicoder.errors import OmniCoderError
from omnicoder.evaluate import bits_per_byte
from omnicoder.model import OmniCoder
from omnicoder.presets import mla_test_config
from omnicoder.train import TrainArgs, train
from omnicoder.weights import load_model, save_model

ARGS = dict(batch_size=4, seq_len=64, lr=3e-3, warmup=2, eval_every=1000, save_every=5, eval_bytes=4096)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small code corpus: this repository's own Python files, copied many times under distinct paths."""
    root = tmp_path_factory.mktemp("corpus")
    sources = sorted(Path(__file__).parents[1].glob("omnicoder/*.py"))
    i = 0
    while i < 120 or not any(is_heldout(p.name) for p in root.iterdir()):  # 2% held out: both splits, whatever
        src = sources[i % len(sources)]  # modules omnicoder/ holds today
        (root / f"m{i:03d}_{src.name}").write_bytes(src.read_bytes())
        i += 1
    return str(root)


def test_short_training_lowers_the_loss(corpus, tmp_path):
    heldout = read_documents(find_corpus(corpus).heldout)
    torch.manual_seed(0)
    before = bits_per_byte(OmniCoder(mla_test_config()).eval(), heldout)["bits_per_byte"]
    torch.manual_seed(0)
    state = train(mla_test_config(), tmp_path / "run", TrainArgs(steps=30, corpus=corpus, **ARGS), progress=False)
    assert state["step"] == 30 and state["history"][-1]["step"] == 30
    after = bits_per_byte(load_model(tmp_path / "run" / "model"), heldout)["bits_per_byte"]
    assert after < before - 1.0, (before, after)


def test_resume_reproduces_an_uninterrupted_run(corpus, tmp_path):
    torch.manual_seed(0)
    train(mla_test_config(), tmp_path / "a", TrainArgs(steps=10, corpus=corpus, **ARGS), progress=False)
    torch.manual_seed(0)
    train(
        mla_test_config(), tmp_path / "b", TrainArgs(steps=10, max_minutes=1e-9, corpus=corpus, **ARGS), progress=False
    )
    stopped = json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())["step"]
    assert stopped < 10
    train(mla_test_config(), tmp_path / "b", TrainArgs(steps=10, corpus=corpus, **ARGS), progress=False)
    a, b = load_model(tmp_path / "a" / "model"), load_model(tmp_path / "b" / "model")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_resume_refuses_another_config(corpus, tmp_path):
    train(mla_test_config(), tmp_path / "run", TrainArgs(steps=2, corpus=corpus, **ARGS), progress=False)
    other = mla_test_config()
    other.n_layers = 3
    with pytest.raises(OmniCoderError, match="another config"):
        train(other, tmp_path / "run", TrainArgs(steps=4, corpus=corpus, **ARGS), progress=False)


def test_checkpoint_round_trip(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    ids, pos = torch.randint(0, 256, (1, 9)), torch.arange(9)[None]
    with torch.no_grad():
        assert torch.equal(loaded(ids, pos).logits, tiny_model(ids, pos).logits)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # nothing half-written left behind
