"""What a bundle's manifest records about its tokenizer beside the file: add_bos, the stop ids and the chat template
(docs/bundle.md, docs/chat.md). Torch-free. A bundle written before these fields gets what the runners did then:
BOS first, stop at model.eos_id only, no chat template."""

from __future__ import annotations

from typing import Any

from omnicoder.runtimes.input_files import read_text

from omnicoder.errors import OmniCoderError

FIX = "re-export the bundle with omnicoder-export"
MAX_TEMPLATE_BYTES = 1 << 20  # chat templates are a few KB


def tokenizer_fields(bundle) -> dict[str, Any]:
    """add_bos, stop_ids and chat_template (text or None) of a bundle's tokenizer, checked against its model."""
    section, model = bundle.manifest["tokenizer"], bundle.model
    stop_ids = list(section.get("stop_ids", [model["eos_id"]]))
    vocab = model["vocab_size"]
    outside = [i for i in stop_ids if i >= vocab]
    if outside:
        raise OmniCoderError(
            f"manifest.json: tokenizer.stop_ids holds {outside[0]}, outside the model's {vocab} ids; {FIX}"
        )
    return {"add_bos": bool(section.get("add_bos", True)), "stop_ids": stop_ids, "chat_template": chat_template(bundle)}


def chat_template(bundle) -> str | None:
    """The text of the bundle's chat template file (checksummed with the other files), or None without one."""
    name = bundle.manifest["tokenizer"].get("chat_template")
    if name is None:
        return None
    if name not in bundle.manifest["files"]:
        raise OmniCoderError(f"manifest.json refers to chat template {name}, which is not in its file list; {FIX}")
    return read_text(bundle.file(name), "bundle chat template", FIX, MAX_TEMPLATE_BYTES)
