"""The tokenizer part of a bundle: tokenizer.json, the chat template (chat_template.jinja) and the manifest's
`tokenizer` section (type, add_bos, stop_ids, chat_template). See docs/bundle.md and docs/chat.md."""

from __future__ import annotations

from pathlib import Path

from omnicoder.config import OmniCoderConfig
from omnicoder.errors import OmniCoderError

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
MAX_STOP_IDS = 64  # as runtimes/schemas/manifest.schema.json bounds them


class Sidecars(dict):
    """The manifest's `sidecars` section, also carrying the `tokenizer` section from `write_common_files` to
    `common_manifest` (every exporter passes this object from one to the other)."""

    tokenizer: dict | None = None


def tokenizer_section(tokenizer_json: str, config: OmniCoderConfig) -> dict:
    """The manifest's `tokenizer` section (without the template file, which `write_tokenizer_files` adds).

    `tokenizer_json` is `tokenizer.to_json()`: a Hugging Face tokenizer's carries its add_bos and stop ids
    (omnicoder.tokenizer.TokenizerFile); any other text gets what a byte model does (BOS, stop at EOS)."""
    fields = getattr(tokenizer_json, "fields", {})
    stop_ids = sorted({config.eos_id, *fields.get("stop_ids", [])} - {-1})
    bad = [i for i in stop_ids if not 0 <= i < config.vocab_size]
    if bad:
        raise OmniCoderError(f"stop id {bad[0]} is outside the model's vocabulary ({config.vocab_size} ids)")
    if len(stop_ids) > MAX_STOP_IDS:
        raise OmniCoderError(f"the tokenizer names {len(stop_ids)} stop ids; a bundle records at most {MAX_STOP_IDS}")
    return {
        "file": TOKENIZER_FILE,
        "type": "omnicoder-byte" if config.tokenizer == "byte" else "huggingface",
        "add_bos": bool(fields.get("add_bos", True)),
        "stop_ids": stop_ids,
    }


def write_tokenizer_files(directory: Path, tokenizer_json: str, config: OmniCoderConfig) -> dict:
    """Write tokenizer.json and, when the tokenizer has one, chat_template.jinja; return the `tokenizer` section."""
    section = tokenizer_section(tokenizer_json, config)
    (directory / TOKENIZER_FILE).write_text(str(tokenizer_json), encoding="utf-8")
    template = getattr(tokenizer_json, "fields", {}).get("chat_template")
    if template:
        (directory / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
        section["chat_template"] = CHAT_TEMPLATE_FILE
        from omnicoder.export.chat_format import bundle_chat_format  # role pieces for the apps (docs/apps.md)

        fmt = bundle_chat_format(str(tokenizer_json), template, config.bos_id, config.eos_id)
        if fmt is not None:
            section["chat_format"] = fmt
    return section
