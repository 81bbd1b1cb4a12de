"""Load a model together with its tokenizer: `default`, a model directory, `hf:DIR` (a Hugging Face
checkpoint of the Llama family, converted on load by `omnicoder.hf_import`) or `gguf:FILE` (a llama.cpp file,
`omnicoder.gguf_import`). Byte models use the byte tokenizer; others their tokenizer.json."""

from __future__ import annotations

from pathlib import Path

from omnicoder.model import OmniCoder
from omnicoder.paths import resolve_model_dir
from omnicoder.tokenizer import ByteTokenizer, Tokenizer
from omnicoder.weights import load_model


def load_model_and_tokenizer(name: str | Path) -> tuple[OmniCoder, Tokenizer]:
    from omnicoder.gguf_import import is_gguf_name, load_gguf_model_and_tokenizer
    from omnicoder.hf_import import is_hf_name, load_hf_model_and_tokenizer

    if is_hf_name(name):
        from omnicoder.hf_import import hf_directory
        from omnicoder.model_files import check_hf_directory

        check_hf_directory(hf_directory(name))  # config.json / tokenizer.json readable and well-typed first
        return load_hf_model_and_tokenizer(name)
    if is_gguf_name(name):
        return load_gguf_model_and_tokenizer(name)
    model = load_model(name)
    c = model.config
    if c.tokenizer == "byte":
        return model, ByteTokenizer(vocab_size=c.vocab_size, bos_id=c.bos_id, eos_id=c.eos_id, pad_id=c.pad_id)
    from omnicoder.model_files import load_directory_tokenizer

    return model, load_directory_tokenizer(resolve_model_dir(name), bos_id=c.bos_id, eos_id=c.eos_id)
