import torch
from omnicoder.runtimes.decode_loop import generate_ids, generate_text
from omnicoder.runtimes.sampling import Sampler, SamplingParams

from omnicoder.generate import TorchBackend
from omnicoder.tokenizer import ByteTokenizer

GREEDY = SamplingParams(temperature=0)


def uncached_greedy(model, prompt_ids, n):
    ids = list(prompt_ids)
    for _ in range(n):
        logits = model(torch.tensor([ids]), torch.arange(len(ids))[None], heads=False).logits
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


@torch.no_grad()
def test_greedy_cached_generation_matches_uncached(tiny_model):
    prompt = [256, *b"def f(x):"]
    out, stats = generate_ids(TorchBackend(tiny_model), prompt, 12, Sampler(GREEDY), eos_id=-1)
    assert out == uncached_greedy(tiny_model, prompt, 12)
    assert stats.prompt_tokens == len(prompt) and stats.generated_tokens == 12 and stats.stop_reason == "limit"


def test_seeded_sampling_is_deterministic(tiny_model):
    tok = ByteTokenizer()
    runs = [
        generate_text(TorchBackend(tiny_model), tok, "import os\n", 16, Sampler(SamplingParams(1.0, 0, 0.9, seed=3)))[0]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


@torch.no_grad()
def test_stops_at_eos(tiny_model):
    out, _ = generate_ids(TorchBackend(tiny_model), [256, 65], 6, Sampler(GREEDY), eos_id=-1)
    # declare the third greedy token to be EOS: generation must stop right before it
    stopped, stats = generate_ids(TorchBackend(tiny_model), [256, 65], 6, Sampler(GREEDY), eos_id=out[2])
    assert stopped == out[: out.index(out[2])] and stats.stop_reason == "eos"


def test_stops_at_context(tiny_model):
    context = tiny_model.config.max_seq_len
    out, stats = generate_ids(TorchBackend(tiny_model), [256] * (context - 3), 50, Sampler(GREEDY), eos_id=-1)
    # the last token is sampled at position context - 1 and never needs to be fed back
    assert stats.stop_reason == "context" and len(out) == 4
