"""A multi-turn chat over one decode-step backend that keeps its KV cache between turns. Torch-free.

Each turn renders the whole conversation with the model's chat template (runtimes/chat_template.py) and
tokenizes it as Hugging Face's `apply_chat_template` does (special tokens in the text, no BOS added: the template
writes it). The cache already holds a prefix of those tokens: the earlier turns as the model saw and wrote them.
Only the rest is fed. Where the template writes a reply differently from the tokens the model produced (another
tokenization of the same text, trimmed whitespace), the cache is rolled back to the first difference, so it
always holds exactly the conversation's tokens: a turn gives what a fresh run over the whole transcript gives.
"""

from __future__ import annotations

from collections.abc import Callable

from omnicoder.runtimes.chat_template import render_chat
from omnicoder.runtimes.decode_loop import StepBackend, decode_text
from omnicoder.runtimes.sampling import Sampler
from omnicoder.runtimes.stats import GenerationStats

from omnicoder.errors import OmniCoderError


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


class ChatSession:
    """The conversation (messages), and the tokens in the backend's KV cache (`cached`)."""

    def __init__(self, backend: StepBackend, tokenizer, system: str | None = None, missing: str = "") -> None:
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise OmniCoderError(missing or "this model has no chat template; drop --chat")
        self.backend, self.tokenizer, self.template = backend, tokenizer, template
        self.messages: list[dict[str, str]] = [] if system is None else [{"role": "system", "content": system}]
        self.stop_ids = list(getattr(tokenizer, "stop_ids", [tokenizer.eos_id]))
        self.cached: list[int] = []
        self.reply_ids: list[int] = []  # the last turn's generated tokens
        backend.reset()

    def _special(self, token_id: int) -> str | None:
        text = getattr(self.tokenizer, "token_text", None)
        return text(token_id) if text is not None else None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        bos, eos = self._special(self.tokenizer.bos_id), self._special(self.tokenizer.eos_id)
        return render_chat(self.template, messages, add_generation_prompt, bos, eos)

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of the conversation with the assistant's header after it."""
        return self.tokenizer.encode(self.render(messages), add_bos=False)

    def _rewind(self, ids: list[int]) -> list[int]:
        """Roll the cache back to its longest prefix of `ids` (at least one token left to feed); the rest to feed."""
        keep = min(common_prefix(self.cached, ids), len(ids) - 1)
        if keep < len(self.cached):
            truncate = getattr(self.backend, "truncate", None)
            if keep == 0 or truncate is None:  # a backend that cannot roll back starts over
                self.backend.reset()
                keep = 0
            else:
                truncate(keep)
            self.cached = self.cached[:keep]
        return ids[keep:]

    def turn(
        self,
        user: str,
        max_new_tokens: int,
        sampler: Sampler,
        on_text: Callable[[str], None] | None = None,
        speculative: int = 0,
        draft: str | None = None,
    ) -> tuple[str, GenerationStats]:
        """Answer one user message; streams the reply's text to on_text and returns it with the turn's stats."""
        messages = [*self.messages, {"role": "user", "content": user}]
        ids = self.encode(messages)
        if not ids:
            raise OmniCoderError("the chat template rendered the conversation as nothing; it cannot be used")
        context = self.backend.context_length
        if len(ids) > context:
            raise OmniCoderError(
                f"the conversation is {len(ids)} tokens, longer than the model's context ({context}); "
                "start a new chat (or shorten the message)"
            )
        new = self._rewind(ids)
        if speculative and self.cached:
            raise OmniCoderError("--speculative drafts only a chat's first turn; drop it for a multi-turn chat")
        reply, out, stats = decode_text(
            self.backend,
            self.tokenizer,
            new,
            max_new_tokens,
            sampler,
            self.stop_ids,
            on_text,
            speculative,
            False,
            draft,
        )
        self.cached = [*self.cached, *new, *out][: self.backend.cache_length]
        self.reply_ids = out
        self.messages = [*messages, {"role": "assistant", "content": reply}]
        return reply, stats
