"""Train the small byte-level BPE tokenizers of the Hugging Face tokenizer vectors (tests/vectors/hf_tokenizers/).

    .venv/bin/python tests/vectors/train_hf_tokenizers.py    # rewrites tests/vectors/hf_tokenizers/*.json

Run by hand, not by generate.py: the files are fixtures (inputs), trained once with `tokenizers` on the repo's own
Python files plus seeded multilingual text, so that later edits of the repo do not change them. generate.py
(gen_hf_tokenizer.py) encodes its strings with them and writes the expected ids. No downloads.

Four tokenizer.json files, in the shapes real checkpoints have:
- gpt2: SmolLM2's own file: Sequence[Digits(individual), ByteLevel(GPT-2 regex)], no normalizer, ByteLevel decoder
  and post-processor, merges as "a b" strings (the older serialization);
- gguf: the same vocabulary as transformers' GGUF converter writes SmolLM2's (ByteLevel pre-tokenizer only, an empty
  normalizer Sequence, byte_fallback + unk, decoder Sequence[ByteFallback, Fuse, Replace, ByteLevel]);
- qwen2: Qwen2's: NFC, Split(Qwen2 regex, Isolated) + ByteLevel(use_regex false), merges as ["a", "b"] lists,
  non-special added tokens (<think>, a single_word TODO, an NFC-normalized café) and lstrip / rstrip specials;
- llama3: the qwen2 vocabulary with Llama-3's: Split(\\p{N}{1,3} regex), ignore_merges, a BOS TemplateProcessing
  post-processor (and ByteLevel add_prefix_space on, for coverage).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "hf_tokenizers"
sys.path.insert(0, str(HERE))
from hf_texts import random_codepoints, random_mixture  # noqa: E402

GPT2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<mask>", "<sep>"]
QWEN_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = QWEN_REGEX.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
VOCAB_SIZE = 2500


def corpus() -> list[str]:
    """The repo's Python files (sorted) and seeded multilingual mixtures."""
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "omnicoder").rglob("*.py"))]
    rng = random.Random(7)
    texts += [random_mixture(rng, 40, with_tokens=False) for _ in range(3000)]
    texts += [random_codepoints(rng, 30) for _ in range(300)]
    return texts


def train(pre_tokenizer, normalizer, specials: list[str], texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def gpt2_style(texts: list[str]) -> dict:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    spec = json.loads(train(pre, None, GPT2_SPECIALS, texts).to_str())
    spec["model"]["merges"] = [" ".join(pair) for pair in spec["model"]["merges"]]
    return spec


def gguf_style(gpt2: dict) -> dict:
    """What transformers' GGUF converter writes for SmolLM2 (omnicoder's gguf: import bundles carry this)."""
    spec = json.loads(json.dumps(gpt2))
    spec["normalizer"] = {"type": "Sequence", "normalizers": []}
    spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    spec["post_processor"] = None
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        ],
    }
    model = spec["model"]
    model.update(unk_token="<|endoftext|>", fuse_unk=True, byte_fallback=True)
    model["merges"] = [m.split(" ") for m in model["merges"]]
    return spec


def qwen2_style(texts: list[str]) -> dict:
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok = train(pre, normalizers.NFC(), QWEN_SPECIALS, texts)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True), AddedToken("<sep>", rstrip=True)])
    tok.add_tokens(
        [
            AddedToken("<think>", special=False, normalized=False),
            AddedToken("</think>", special=False, normalized=False),
            AddedToken("TODO", single_word=True, special=False, normalized=False),
            AddedToken("caf\u00e9", special=False, normalized=True),
        ]
    )
    return json.loads(tok.to_str())


def llama3_style(qwen2: dict) -> dict:
    spec = json.loads(json.dumps(qwen2))
    spec["normalizer"] = None
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": LLAMA3_REGEX}
    spec["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True
    spec["model"]["ignore_merges"] = True
    bos = "<|begin_of_text|>"
    bos_id = next(t["id"] for t in spec["added_tokens"] if t["content"] == bos)
    spec["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": bos, "type_id": 1}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
            },
        ],
    }
    return spec


def main() -> int:
    from tokenizers import Tokenizer

    texts = corpus()
    gpt2 = gpt2_style(texts)
    qwen2 = qwen2_style(texts)
    specs = {"gpt2": gpt2, "gguf": gguf_style(gpt2), "qwen2": qwen2, "llama3": llama3_style(qwen2)}
    OUT.mkdir(exist_ok=True)
    for name, spec in specs.items():
        text = json.dumps(spec, ensure_ascii=False, separators=(",", ":")) + "\n"
        Tokenizer.from_str(text)  # the library accepts it
        (OUT / f"{name}.json").write_text(text, encoding="utf-8")
        print(f"{name}: {len(spec['model']['vocab'])} tokens, {len(spec['model']['merges'])} merges, {len(text)} chars")
    return 0


if __name__ == "__main__":
    sys.exit(main())
