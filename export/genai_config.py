"""genai_config.json: lets onnxruntime-genai (0.15.x) run an ONNX bundle's decode-step graph as it is.

onnxruntime-genai's generic decoder reads the graph names from this file. It needs input_ids, the past KV
inputs (BNSH, one key and one value per layer) and logits + present outputs; attention_mask and position_ids
are optional (it feeds position_ids when the graph has them, and our graph needs no mask: causality is
in the graph). It requests every other output too (queries, MTP logits) and ignores them.

For Hugging Face tokenizers a minimal tokenizer_config.json is written too (onnxruntime-genai's tokenizer needs
it beside tokenizer.json), carrying the chat template (`Tokenizer.apply_chat_template`); byte-level bundles are
driven with token ids (genai cannot load our byte tokenizer). `eos_token_id` lists every stop id the checkpoint
names (EOS, end of turn: genai stops at each), a plain id when there is one.

Graphs it cannot drive get no config, with the reason recorded in the manifest:
- MLA models: one latent row per token and no value slot, which genai's KV cache cannot describe;
- quantized KV caches (u8 / nf4 codes with scale inputs): genai feeds only float KV tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

from omnicoder.export.bundle_tokenizer import tokenizer_section

from omnicoder.config import OmniCoderConfig
from omnicoder.io_contract import INPUT_IDS, LOGITS, POSITION_IDS, kv_names, past_name, present_name

GENAI_CONFIG_FILE = "genai_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
FLOAT_KV = ("float32", "float16")


def unsupported_reason(config: OmniCoderConfig, inputs: list[dict]) -> str | None:
    """Why onnxruntime-genai cannot run this graph, or None when it can."""
    if config.attention != "gqa":
        return "no genai_config.json: onnxruntime-genai cannot describe MLA's latent KV cache (no value slot)"
    past = set(kv_names(config)[0])
    names = {spec["name"] for spec in inputs}
    extra = sorted(names - past - {INPUT_IDS, POSITION_IDS})
    if extra or not past <= names:
        shown = ", ".join(extra[:2]) + (", ..." if len(extra) > 2 else "")
        return f"no genai_config.json: the graph has inputs onnxruntime-genai does not feed ({shown})"
    if any(spec["name"] in past and spec["dtype"] not in FLOAT_KV for spec in inputs):
        return "no genai_config.json: onnxruntime-genai feeds float KV tensors only (quantized KV cache)"
    return None


def genai_config(
    config: OmniCoderConfig, graph_file: str = "model.onnx", shared: bool = False, stop_ids: list[int] | None = None
) -> dict:
    """The genai_config.json document for a GQA decode-step graph with our I/O names (`shared`: --kv-io shared,
    whose past and present are one buffer; `stop_ids`: every id that ends generation, default [eos_id])."""
    c = config
    stops = sorted(set(stop_ids or [c.eos_id]))
    return {
        "model": {
            "type": "decoder",
            "bos_token_id": c.bos_id,
            "eos_token_id": stops[0] if len(stops) == 1 else stops,
            "pad_token_id": c.pad_id,
            "context_length": c.max_seq_len,
            "vocab_size": c.vocab_size,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": graph_file,
                "head_size": c.head_dim,
                "hidden_size": c.d_model,
                "num_attention_heads": c.n_heads,
                "num_hidden_layers": c.n_layers,
                "num_key_value_heads": c.n_kv_heads,
                "inputs": {
                    "input_ids": INPUT_IDS,
                    "position_ids": POSITION_IDS,
                    "past_key_names": past_name("%d", "key"),
                    "past_value_names": past_name("%d", "value"),
                },
                "outputs": {
                    "logits": LOGITS,
                    "present_key_names": present_name("%d", "key"),
                    "present_value_names": present_name("%d", "value"),
                },
            },
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": c.max_seq_len,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": shared,  # False: present = past + new (the Attention op concatenates)
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def tokenizer_config(tokenizer_json: str, config: OmniCoderConfig) -> dict:
    """The tokenizer_config.json onnxruntime-genai reads beside a Hugging Face tokenizer.json (with the chat
    template when the checkpoint has one)."""
    added = {t["id"]: t["content"] for t in json.loads(tokenizer_json).get("added_tokens", [])}
    document = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    for key, token_id in (("bos_token", config.bos_id), ("eos_token", config.eos_id), ("pad_token", config.pad_id)):
        if token_id in added:
            document[key] = added[token_id]
    template = getattr(tokenizer_json, "fields", {}).get("chat_template")
    if template:
        document["chat_template"] = template
    return document


def write_genai_config(
    directory: Path,
    config: OmniCoderConfig,
    inputs: list[dict],
    sidecars: dict,
    tokenizer_json: str,
    shared: bool = False,
) -> list[str]:
    """Write genai_config.json (+ tokenizer_config.json for HF tokenizers) when the graph suits onnxruntime-genai,
    listing them in `sidecars` (in place). Returns notes for the manifest's graph constraints (why it was skipped).
    """
    reason = unsupported_reason(config, inputs)
    if reason is not None:
        return [reason]
    stop_ids = tokenizer_section(tokenizer_json, config)["stop_ids"]
    document = genai_config(config, shared=shared, stop_ids=stop_ids)
    (directory / GENAI_CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
    sidecars["genai_config"] = GENAI_CONFIG_FILE
    if config.tokenizer != "byte":
        document = tokenizer_config(tokenizer_json, config)
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
        sidecars["genai_tokenizer_config"] = TOKENIZER_CONFIG_FILE
    return []
