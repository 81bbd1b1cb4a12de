"""Role prefixes and suffixes rendered at export from a model's chat template, for runtimes without Jinja (the
sample apps). Torch-free; jinja2 (runtimes/chat_template.py) is needed only when the bundle has a template.

The template is rendered on a few conversations whose contents are sentinel strings, and the text around each
sentinel becomes a piece of the manifest's `tokenizer.chat_format` (docs/apps.md):

    preamble            before the first user message when there is no system message (a default system prompt)
    system.prefix/suffix around a system message (null when the template refuses one)
    user.prefix/suffix, assistant.prefix/suffix   around a message of that role
    generation_prompt   what add_generation_prompt appends (the assistant's header)
    trim                whether the template strips whitespace around each message's content (Jinja's `| trim`,
                        Python's str.strip(): the apps strip the same characters)

A conversation is then `preamble` (or the system message) + user turn + `generation_prompt`; after a reply the next
turn is `assistant.suffix` + user turn + `generation_prompt`, fed as a continuation of the KV cache. The pieces are
kept only when they reproduce the template's rendering of two-turn conversations with and without a system message;
a template they cannot describe (one that rewrites earlier turns, e.g. drops old reasoning) gives no chat_format.
"""

from __future__ import annotations

import json

from omnicoder.runtimes.chat_template import render_chat

from omnicoder.errors import OmniCoderError

SYSTEM, USER1, ASSISTANT1, USER2 = "OMNICODERSYSTEMTEXT", "OMNICODERUSERONE", "OMNICODERREPLYONE", "OMNICODERUSERTWO"


def _between(text: str, start: int, marker: str) -> tuple[str, int]:
    """The text from `start` up to `marker` and the index just after it; ValueError when the marker is absent."""
    at = text.index(marker, start)
    return text[start:at], at + len(marker)


def _strip_end(text: str, suffix: str) -> str:
    if not text.endswith(suffix):
        raise ValueError("the pieces do not line up")
    return text[: len(text) - len(suffix)]


def compose(fmt: dict, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The conversation written from the pieces (what the apps feed, turn after turn), for checking them."""
    out, first = [], True
    trim = fmt.get("trim", False)
    for message in messages:
        role = message["role"]
        if first and role != "system":
            out.append(fmt["preamble"])
        first = False
        piece = fmt[role]
        if piece is None:
            raise ValueError(f"the template takes no {role} message")
        out += [piece["prefix"], message["content"].strip() if trim else message["content"], piece["suffix"]]
    if add_generation_prompt:
        out.append(fmt["generation_prompt"])
    return "".join(out)


def derive_chat_format(template: str, bos_token: str | None, eos_token: str | None) -> dict | None:
    """The pieces of `template`, or None when they cannot reproduce its renderings (see the module docstring)."""

    def render(messages: list[dict[str, str]], gen: bool = False) -> str:
        return render_chat(template, messages, gen, bos_token, eos_token)

    user1, assistant1, user2 = (
        {"role": "user", "content": USER1},
        {"role": "assistant", "content": ASSISTANT1},
        {"role": "user", "content": USER2},
    )
    try:
        one = render([user1])
        two = render([user1, assistant1])
        three = render([user1, assistant1, user2])
        prompt = render([user1], True)
        if not (two.startswith(one) and three.startswith(two) and prompt.startswith(one)):
            return None
        user_prefix, end = _between(three, len(two), USER2)
        user = {"prefix": user_prefix, "suffix": three[end:]}
        head, end = _between(one, 0, USER1)
        preamble = _strip_end(head, user_prefix)
        assistant_prefix, end = _between(two, len(one), ASSISTANT1)
        fmt = {
            "preamble": preamble,
            "system": None,
            "user": user,
            "assistant": {"prefix": assistant_prefix, "suffix": two[end:]},
            "generation_prompt": prompt[len(one) :],
        }
    except (ValueError, OmniCoderError):
        return None
    fmt["system"] = _system_piece(render, user1, user_prefix)
    padded = f" \t{USER1}\n "
    try:
        fmt["trim"] = padded not in render([{"role": "user", "content": padded}])  # Jinja's `| trim`: str.strip()
    except OmniCoderError:
        return None
    return fmt if _reproduces(fmt, render) else None


def _system_piece(render, user1: dict, user_prefix: str) -> dict | None:
    """Prefix and suffix of a system message, or None when the template refuses one or merges it into the user's."""
    try:
        text = render([{"role": "system", "content": SYSTEM}, user1])
        prefix, end = _between(text, 0, SYSTEM)
        tail, _ = _between(text, end, USER1)
        return {"prefix": prefix, "suffix": _strip_end(tail, user_prefix)}
    except (ValueError, OmniCoderError):
        return None


def _reproduces(fmt: dict, render) -> bool:
    """True when the pieces write the same text as the template for two-turn chats (with and without a system, and
    with a reply that reasons in <think> tags, which Qwen3-style templates drop from earlier turns)."""
    chat = [
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Write a loop."},
    ]
    padded = [{"role": m["role"], "content": f"\n {m['content']}\u3000\n"} for m in chat]
    reasoned = [*chat[:1], {"role": "assistant", "content": "<think>\nPlan it.\n</think>\n\nDone."}, *chat[2:]]
    cases = [chat, reasoned, padded] + ([[{"role": "system", "content": "Be brief."}, *chat]] if fmt["system"] else [])
    try:
        return all(compose(fmt, msgs, gen) == render(msgs, gen) for msgs in cases for gen in (True, False))
    except (ValueError, OmniCoderError):
        return False


def token_text(tokenizer_json: str, token_id: int) -> str | None:
    """The text of an id in a tokenizer.json (an added token's content, else its vocabulary entry)."""
    if token_id < 0:
        return None
    spec = json.loads(tokenizer_json)
    for added in spec.get("added_tokens") or []:
        if added.get("id") == token_id:
            return added.get("content")
    vocab = (spec.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, dict):
        for text, i in vocab.items():
            if i == token_id:
                return text
    return None


def bundle_chat_format(tokenizer_json: str, template: str, bos_id: int, eos_id: int) -> dict | None:
    """The manifest's `tokenizer.chat_format` for a bundle whose tokenizer has `template` (None: not describable)."""
    return derive_chat_format(template, token_text(tokenizer_json, bos_id), token_text(tokenizer_json, eos_id))
