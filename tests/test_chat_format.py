"""export/chat_format.py: the chat template rendered at export into role pieces for the apps (docs/apps.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import pytest
from omnicoder.export.bundle_tokenizer import write_tokenizer_files
from omnicoder.export.chat_format import compose, derive_chat_format
from omnicoder.runtimes.chat_template import render_chat

from omnicoder.config import OmniCoderConfig
from omnicoder.tokenizer import TokenizerFile

pytest.importorskip("jinja2", reason="jinja2 is not installed (pip install jinja2)")
VECTORS = Path(__file__).resolve().parent / "vectors"
sys.path.insert(0, str(VECTORS))
from gen_chat_format import BOS_FIRST, QWEN25, REWRITING, SMOLLM2  # noqa: E402

CHAT = [
    {"role": "system", "content": "Be exact."},
    {"role": "user", "content": "a"},
    {"role": "assistant", "content": "b"},
    {"role": "user", "content": "c"},
]


@pytest.mark.parametrize("template", [SMOLLM2, QWEN25, BOS_FIRST])
def test_pieces_reproduce_the_template(template):
    bos, eos = "<|begin_of_text|>", "<|im_end|>"
    fmt = derive_chat_format(template, bos, eos)
    assert fmt is not None
    for messages in (CHAT, CHAT[1:], CHAT[:2]):
        for gen in (True, False):
            assert compose(fmt, messages, gen) == render_chat(template, messages, gen, bos, eos)


def test_default_system_prompt_is_the_preamble():
    fmt = derive_chat_format(SMOLLM2, None, "<|im_end|>")
    assert fmt["preamble"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert fmt["system"] == {"prefix": "<|im_start|>system\n", "suffix": "<|im_end|>\n"}
    assert fmt["generation_prompt"] == fmt["assistant"]["prefix"] == "<|im_start|>assistant\n"


def test_bos_written_by_the_template_stays_in_the_text():
    fmt = derive_chat_format(BOS_FIRST, "<s>", "</s>")
    assert fmt["preamble"] == "<s>" and fmt["system"]["prefix"].startswith("<s><|im_start|>system")
    assert fmt["trim"] and not derive_chat_format(SMOLLM2, None, None)["trim"]  # BOS_FIRST writes `content | trim`


def test_templates_the_pieces_cannot_describe_give_none():
    assert derive_chat_format(REWRITING, None, None) is None  # drops earlier reasoning
    order = "{% for m in messages %}{{ m.content }}|{% endfor %}{{ messages | length }}"
    assert derive_chat_format(order, None, None) is None  # writes a count after the messages
    assert derive_chat_format("{{ messages[99].content }}", None, None) is None  # fails on short chats


def test_a_template_that_refuses_system_messages_has_no_system_piece():
    template = (
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}{% endif %}"
        "[{{ m.role }}]{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    fmt = derive_chat_format(template, None, None)
    assert fmt["system"] is None and fmt["user"] == {"prefix": "[user]", "suffix": "\n"}
    merged = (  # Gemma's kind: the system text goes into the first user turn
        "{% for m in messages %}{% if m.role == 'system' %}{% set ns = m.content %}{% else %}"
        "<turn>{{ m.role }}\n{{ m.content }}<end>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<turn>assistant\n{% endif %}"
    )
    assert derive_chat_format(merged, None, None)["system"] is None


def test_manifest_section_carries_the_format_and_the_schema_accepts_it(tmp_path):
    text = (VECTORS / "hf_tokenizers" / "gpt2.json").read_text(encoding="utf-8")
    fields = {"add_bos": False, "stop_ids": [2], "chat_template": SMOLLM2}
    config = OmniCoderConfig(vocab_size=2560, bos_id=1, eos_id=0)
    section = write_tokenizer_files(tmp_path, TokenizerFile(text, fields), config)
    assert section["chat_format"]["user"]["prefix"] == "<|im_start|>user\n"
    schema = json.loads((Path(__file__).resolve().parents[1] / "runtimes/schemas/manifest.schema.json").read_text())
    tokenizer_schema = schema["properties"]["tokenizer"]
    jsonschema.Draft202012Validator(tokenizer_schema).validate(section)
    bad = {**section, "chat_format": {**section["chat_format"], "user": {"prefix": 1, "suffix": ""}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(tokenizer_schema).validate(bad)
