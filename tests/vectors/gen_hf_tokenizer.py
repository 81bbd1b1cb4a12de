"""Vectors of the apps' tokenizer.json tokenizers (hf_tokenizer.json): what the `tokenizers` library answers.

The tokenizer files are fixtures under hf_tokenizers/ (train_hf_tokenizers.py, trained locally); the strings come
from hf_texts.py. For each tokenizer and string: ids with and without the post-processor's special tokens, the
decoded text with and without special tokens (null stands for "the same as", to keep the file small:
encode_special for encode, decode for the string itself, decode_skip for decode) and, every STREAM_EVERY-th
string, the pieces omnicoder's incremental decoder emits token by token. Then random id sequences (invalid UTF-8
included) decoded and streamed, and tokenizer.json kinds the apps refuse. `--real PATH` prints the same vectors
for another tokenizer.json (e.g. SmolLM2's, rebuilt by the GGUF importer) for a one-off check (not committed).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hf_texts import all_texts  # noqa: E402

FORMAT = 1
NAMES = ["gpt2", "gguf", "qwen2", "llama3"]
STREAM_EVERY = 4
RANDOM_DECODES = 200

BASE = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [],
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "post_processor": None,
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
}  # fmt: skip


def _variant(path: str, value: object) -> dict:
    spec = json.loads(json.dumps(BASE))
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[key]
    node[last] = value
    return spec


# tokenizer.json kinds the apps refuse, with the word their error must name
REFUSED = [
    ("unigram", _variant("model", {"type": "Unigram", "unk_id": 0, "vocab": [["a", 0.0]], "byte_fallback": False}),
     "Unigram"),
    ("wordpiece", _variant("model", {"type": "WordPiece", "unk_token": "a", "continuing_subword_prefix": "##",
                                     "max_input_chars_per_word": 100, "vocab": {"a": 0}}), "WordPiece"),
    ("wordlevel", _variant("model", {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}), "WordLevel"),
    ("metaspace", _variant("pre_tokenizer", {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
                                             "split": False}), "Metaspace"),
    ("bert-pre", _variant("pre_tokenizer", {"type": "BertPreTokenizer"}), "BertPreTokenizer"),
    ("prepend", _variant("normalizer", {"type": "Prepend", "prepend": "\u2581"}), "Prepend"),
    ("lowercase", _variant("normalizer", {"type": "Lowercase"}), "Lowercase"),
    ("metaspace-decoder", _variant("decoder", {"type": "Metaspace", "replacement": "\u2581",
                                               "prepend_scheme": "always", "split": True}), "Metaspace"),
    ("bert-post", _variant("post_processor", {"type": "BertProcessing", "sep": ["b", 1], "cls": ["a", 0]}),
     "BertProcessing"),
    ("dropout", _variant("model.dropout", 0.1), "dropout"),
]  # fmt: skip


def _stream(decoder_factory, ids: list[int]) -> dict:
    decoder = decoder_factory()
    return {"pieces": [decoder.push(i) for i in ids], "flush": decoder.flush()}


def tokenizer_cases(text: str, texts: list[str], seed: int) -> dict:
    """The vectors of one tokenizer.json text."""
    from tokenizers import Tokenizer

    from omnicoder.tokenizer import HFTokenizer

    tok = Tokenizer.from_str(text)
    ours = HFTokenizer(text, bos_id=-1, eos_id=-1)
    encode, encode_special, decode, decode_skip, stream = [], [], [], [], []
    for i, t in enumerate(texts):
        ids = tok.encode(t, add_special_tokens=False).ids
        special = tok.encode(t, add_special_tokens=True).ids
        text_all = tok.decode(ids, skip_special_tokens=False)
        text_skip = tok.decode(ids, skip_special_tokens=True)
        encode.append(ids)
        encode_special.append(None if special == ids else special)
        decode.append(None if text_all == t else text_all)
        decode_skip.append(None if text_skip == text_all else text_skip)
        if i % STREAM_EVERY == 0:
            stream.append({"text": i, **_stream(ours.incremental_decoder, ids)})
    rng = random.Random(seed)
    size = tok.get_vocab_size(with_added_tokens=True)
    random_ids = []
    for _ in range(RANDOM_DECODES):
        ids = [rng.randrange(size + 2) for _ in range(rng.randint(1, 12))]  # 2 ids past the vocabulary
        random_ids.append(
            {
                "ids": ids,
                "text": tok.decode(ids, skip_special_tokens=False),
                "text_skip": tok.decode(ids, skip_special_tokens=True),
                **_stream(ours.incremental_decoder, ids),
            }
        )
    return {
        "vocab_size": size,
        "encode": encode,
        "encode_special": encode_special,
        "decode": decode,
        "decode_skip": decode_skip,
        "stream": stream,
        "random_ids": random_ids,
    }


def _check_refused() -> list[dict]:
    from tokenizers import Tokenizer

    out = []
    for name, spec, word in REFUSED:
        Tokenizer.from_str(json.dumps(spec))  # valid for the library: the refusal is the apps' own
        out.append({"name": name, "tokenizer": spec, "error_names": word})
    return out


def hf_tokenizer_vectors() -> dict:
    texts = all_texts()
    tokenizers = []
    for seed, name in enumerate(NAMES):
        rel = f"hf_tokenizers/{name}.json"
        cases = tokenizer_cases((HERE / rel).read_text(encoding="utf-8"), texts, seed)
        tokenizers.append({"name": name, "file": rel, **cases})
    return {"format": FORMAT, "texts": texts, "tokenizers": tokenizers, "refused": _check_refused()}


def compact(data: dict) -> str:
    """JSON with one list entry per line (small and diffable)."""
    lines = ["{"]
    items = list(data.items())
    for n, (key, value) in enumerate(items):
        end = "," if n < len(items) - 1 else ""
        if isinstance(value, list) and value and key != "ids":
            body = ",\n".join(_one(v) for v in value)
            lines.append(f"{json.dumps(key)}: [\n{body}\n]{end}")
        elif isinstance(value, dict) and key != "tokenizer":
            lines.append(f"{json.dumps(key)}: {compact(value)}{end}")
        else:
            lines.append(f"{json.dumps(key)}: {_one(value)}{end}")
    return "\n".join(lines) + "\n}"


def _one(value: object) -> str:
    if isinstance(value, dict) and any(isinstance(v, list) and len(v) > 50 for v in value.values()):
        return compact(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--real":
        texts = all_texts()
        cases = tokenizer_cases(Path(sys.argv[2]).read_text(encoding="utf-8"), texts, 99)
        data = {"format": FORMAT, "texts": texts, "tokenizers": [{"name": "real", "file": sys.argv[2], **cases}]}
        print(compact({**data, "refused": []}))
        return 0
    print(compact(hf_tokenizer_vectors()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
