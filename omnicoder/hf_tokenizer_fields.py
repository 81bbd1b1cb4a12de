"""What an `hf:DIR` checkpoint says about its tokenizer beyond tokenizer.json: whether prompts start with BOS,
every id that ends generation, and the chat template. Torch-free; reads files only.

- add_bos: as transformers (4.57) decides. The fast tokenizer classes that rebuild tokenizer.json's
  post-processor from `add_bos_token` (Llama, CodeLlama, Gemma, Cohere: default true; GPT-NeoX: default false)
  follow tokenizer_config.json's `add_bos_token`; every other class (PreTrainedTokenizerFast, GPT2, Qwen2, ...)
  ignores that flag, and whether tokenizer.json's post-processor puts the BOS token first decides (Llama 3's
  TemplateProcessing does, Qwen's ByteLevel does not). The class is tokenizer_config.json's `tokenizer_class`,
  else config.json's, else the model type's (transformers' AutoTokenizer order).
- stop ids: config.json's and generation_config.json's `eos_token_id` (an id or a list: Llama 3 Instruct lists
  `<|eot_id|>` and `<|eom_id|>`), and tokenizer_config.json's `eos_token`.
- chat template: chat_template.jinja, else chat_template.json's `chat_template`, else tokenizer_config.json's
  `chat_template` (a string, or a list of named templates: the one named "default").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omnicoder.errors import OmniCoderError
from omnicoder.runtimes.input_files import MAX_JSON_BYTES, read_text
from omnicoder.tokenizer import HFTokenizer

FIX = "fix it or re-save the checkpoint with save_pretrained"
# fast tokenizer classes whose __init__ rewrites the post-processor from add_bos_token, with its default
BOS_FROM_FLAG = {
    "LlamaTokenizer": True,
    "CodeLlamaTokenizer": True,
    "GemmaTokenizer": True,
    "CohereTokenizer": True,
    "GPTNeoXTokenizer": False,
}
# AutoTokenizer's class per model type, where it is one of the above (others let the post-processor decide)
MODEL_TYPE_TOKENIZERS = {
    "llama": "LlamaTokenizer",
    "mistral": "LlamaTokenizer",
    "phi3": "LlamaTokenizer",
    "gemma": "GemmaTokenizer",
    "gemma2": "GemmaTokenizer",
    "gemma3": "GemmaTokenizer",
    "gemma3_text": "GemmaTokenizer",
    "cohere": "CohereTokenizer",
    "olmo": "GPTNeoXTokenizer",
    "olmo2": "GPTNeoXTokenizer",
    "gpt_neox": "GPTNeoXTokenizer",
}
MAX_TEMPLATE_BYTES = 1 << 20


def _optional_json(path: Path) -> dict[str, Any]:
    """A JSON object file of the checkpoint ({} when absent). Not input_files.read_json: tokenizer_config.json
    holds integers past 64 bits (model_max_length = 1e30) that it rightly refuses in our own files."""
    if not path.exists():
        return {}
    text = read_text(path, "checkpoint file", FIX, MAX_JSON_BYTES)
    try:
        document = json.loads(text, parse_constant=lambda name: None)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise OmniCoderError(f"{path} is not valid JSON ({getattr(exc, 'msg', 'nested too deeply')}); {FIX}") from None
    if not isinstance(document, dict):
        raise OmniCoderError(f"{path} is not a JSON object; {FIX}")
    return document


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: its text, or an object with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any, where: str) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise OmniCoderError(f"{where} eos_token_id must be a token id or a list of ids, got {str(value)[:80]}; {FIX}")
    return values


def _adds_bos(processor: Any, bos_text: str | None, bos_id: int) -> bool:
    """Whether a tokenizer.json post-processor puts the BOS token at the start of a single sequence."""
    if not isinstance(processor, dict):
        return False
    kind = processor.get("type")
    if kind == "Sequence":
        return any(_adds_bos(p, bos_text, bos_id) for p in processor.get("processors") or [])
    if kind == "TemplateProcessing":
        first = (processor.get("single") or [None])[0]
        name = first.get("SpecialToken", {}).get("id") if isinstance(first, dict) else None
        if name is None:
            return False
        special = (processor.get("special_tokens") or {}).get(name) or {}
        return name == bos_text or special.get("ids") == [bos_id]
    if kind in ("RobertaProcessing", "BertProcessing"):
        cls = processor.get("cls")
        return isinstance(cls, list) and len(cls) == 2 and (cls[0] == bos_text or cls[1] == bos_id)
    return False


def tokenizer_class(tokenizer_config: dict[str, Any], hf_config: dict[str, Any]) -> str | None:
    """The tokenizer class transformers' AutoTokenizer picks, without its "Fast" suffix."""
    name = tokenizer_config.get("tokenizer_class") or hf_config.get("tokenizer_class")
    if not isinstance(name, str):
        name = MODEL_TYPE_TOKENIZERS.get(str(hf_config.get("model_type")))
    return name.removesuffix("Fast") if isinstance(name, str) else None


def add_bos(
    tokenizer_config: dict[str, Any],
    tokenizer_spec: dict[str, Any],
    tokenizer: HFTokenizer,
    hf_config: dict[str, Any] | None = None,
) -> bool:
    """Whether the checkpoint's own tokenizer (as transformers loads it) starts a sequence with BOS."""
    kind = tokenizer_class(tokenizer_config, hf_config or {})
    if kind in BOS_FROM_FLAG:
        value = tokenizer_config.get("add_bos_token")
        return (value if isinstance(value, bool) else BOS_FROM_FLAG[kind]) and tokenizer.bos_id >= 0
    bos_text = tokenizer.token_text(tokenizer.bos_id)
    return _adds_bos(tokenizer_spec.get("post_processor"), bos_text, tokenizer.bos_id)


def stop_ids(
    hf_config: dict[str, Any], generation_config: dict[str, Any], tokenizer_config: dict[str, Any], tokenizer
) -> list[int]:
    ids = _ids(hf_config.get("eos_token_id"), "config.json") + _ids(
        generation_config.get("eos_token_id"), "generation_config.json"
    )
    eos_text = _token_content(tokenizer_config.get("eos_token"))
    if eos_text is not None and (found := tokenizer.token_id(eos_text)) is not None:
        ids.append(found)
    vocab = int(hf_config.get("vocab_size") or 0)
    outside = [i for i in ids if not 0 <= i < vocab]
    if outside:
        raise OmniCoderError(f"stop id {outside[0]} (eos_token_id) is outside the model's {vocab} ids; {FIX}")
    return sorted(set(ids))


def chat_template(path: Path, tokenizer_config: dict[str, Any]) -> str | None:
    if (path / "chat_template.jinja").exists():
        return read_text(path / "chat_template.jinja", "chat template", FIX, MAX_TEMPLATE_BYTES)
    value = _optional_json(path / "chat_template.json").get("chat_template")
    if value is None:
        value = tokenizer_config.get("chat_template")
    if isinstance(value, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    if value is not None and not isinstance(value, str):
        raise OmniCoderError(f"{path}: chat_template must be a Jinja template (a string); {FIX}")
    return value or None


def read_checkpoint_fields(
    path: Path, hf_config: dict[str, Any], tokenizer_spec: dict[str, Any], tokenizer: HFTokenizer
) -> dict[str, Any]:
    """add_bos, stop_ids and chat_template of the checkpoint in `path` (see the module docstring)."""
    tokenizer_config = _optional_json(path / "tokenizer_config.json")
    generation_config = _optional_json(path / "generation_config.json")
    return {
        "add_bos": add_bos(tokenizer_config, tokenizer_spec, tokenizer, hf_config),
        "stop_ids": stop_ids(hf_config, generation_config, tokenizer_config, tokenizer),
        "chat_template": chat_template(path, tokenizer_config),
    }
