"""Chat formatting vectors (chat_format.json) for the apps' cores: Python's ChatSession (runtimes/chat.py, the
template rendered with jinja2) over a scripted backend, against the pieces export/chat_format.py records.

Each case names a tokenizer fixture (hf_tokenizers/), a chat template in the shape real checkpoints ship (SmolLM2's
ChatML with a default system prompt, Qwen2.5's, a Llama-3-like one that writes BOS itself), the manifest's
`chat_format` derived from it, and conversations of several turns. For each turn: the user's text, the reply the
scripted model gives (`reply_ids`, then `stop_id` or the token limit), and `fed`: every token Python's ChatSession
fed to the backend in that turn (the first turn from position 0, later ones continuing the KV cache). An app core
that formats the turns from `chat_format` and drives its Conversation must feed exactly `fed`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
BOS_FIRST = (  # Llama-3's shape: BOS written by the template, headers around the role, no default system prompt
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '<sep>\\n\\n' + message['content'] | trim + '<|im_end|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant<sep>\\n\\n' }}{%- endif %}"
)
REWRITING = (  # Qwen3's kind: earlier replies are rewritten (reasoning dropped), so no prefix/suffix describes it
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and not loop.last %}{{ m.content.split('</think>')[-1] }}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# (user text, reply text, ends on a stop id: True, else the token limit)
CHAT = [
    ("Write a Python function that adds two numbers.", "def add(a, b):\n    return a + b", True),
    ("Now make it  add three, please \u2014 caf\u00e9 \U0001f600", "def add(a, b, c):\n    return a + b + c", True),
    ("And in one line?", "add = lambda a, b, c: a + b + c", False),
    ("Thanks!\n", "You're welcome.", True),
]
# name, tokenizer fixture, template, bos id, eos id, add_bos, stop ids
CASES = [
    ("smollm2", "gpt2.json", SMOLLM2, -1, 0, False, [0, 2]),
    ("qwen2.5", "qwen2.json", QWEN25, -1, 0, False, [0, 2]),
    ("bos-first", "qwen2.json", BOS_FIRST, 3, 2, True, [0, 2]),
    ("rewriting", "gpt2.json", REWRITING, -1, 0, False, [0, 2]),
]
SYSTEMS = [None, "You are a terse coding assistant."]


class ScriptedBackend:
    """A StepBackend that answers with `script` token by token and records what it is fed."""

    def __init__(self, vocab: int, context: int = 4096) -> None:
        self.vocab, self.context_length = vocab, context
        self.script: list[int] = []
        self.fed: list[int] = []
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    @property
    def cache_length(self) -> int:
        return self.length

    def step(self, ids: list[int], positions: list[int]) -> np.ndarray:
        assert positions == list(range(self.length, self.length + len(ids)))
        self.fed += ids
        self.length += len(ids)
        logits = np.zeros(self.vocab, np.float32)
        logits[self.script.pop(0)] = 1.0
        return logits

    def truncate(self, length: int) -> None:
        raise AssertionError("the vectors are chosen so that Python never rolls the cache back")


def _conversation(tok, template_stop: int, system: str | None) -> list[dict]:
    from omnicoder.runtimes.chat import ChatSession
    from omnicoder.runtimes.sampling import Sampler, SamplingParams

    backend = ScriptedBackend(tok.vocab_size)
    chat = ChatSession(backend, tok, system)
    turns = []
    for user, reply, on_stop in CHAT:
        reply_ids = tok.encode(reply, add_bos=False)
        backend.script = [*reply_ids, template_stop] if on_stop else list(reply_ids)
        backend.fed = []
        text, _ = chat.turn(user, len(reply_ids) + 1 if on_stop else len(reply_ids), Sampler(SamplingParams(0)))
        assert chat.reply_ids == reply_ids and text == reply, (chat.reply_ids, reply_ids, text)
        turns.append(
            {"user": user, "reply_ids": reply_ids, "stop_id": template_stop if on_stop else None, "fed": backend.fed}
        )
    return turns


def chat_format_vectors() -> dict:
    from omnicoder.export.chat_format import bundle_chat_format, compose

    from omnicoder.tokenizer import HFTokenizer

    cases = []
    for name, fixture, template, bos, eos, add_bos, stops in CASES:
        text = (HERE / "hf_tokenizers" / fixture).read_text(encoding="utf-8")
        tok = HFTokenizer(text, bos, eos, add_bos, stops, template)
        fmt = bundle_chat_format(text, template, bos, eos)
        case = {
            "name": name,
            "tokenizer": f"hf_tokenizers/{fixture}",
            "bos_id": bos,
            "eos_id": eos,
            "add_bos": add_bos,
            "stop_ids": tok.stop_ids,
            "chat_template": template,
            "chat_format": fmt,
            "conversations": [],
        }
        if fmt is not None:
            for system in SYSTEMS if fmt["system"] else SYSTEMS[:1]:
                turns = _conversation(tok, 2, system)
                first = [{"role": "system", "content": system}] if system else []
                prompt = tok.encode(compose(fmt, [*first, {"role": "user", "content": CHAT[0][0]}]), False)
                assert turns[0]["fed"][: len(prompt)] == prompt
                case["conversations"].append({"system": system, "turns": turns})
        cases.append(case)
    spaces = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
    strip = [spaces + "a" + spaces, "\u200b x \u200b", "\ufeffy\ufeff", " \u180e z\u180e", spaces, "", "q"]
    return {"format": 1, "cases": cases, "strip": [{"text": t, "stripped": t.strip()} for t in strip]}
