"""Vectors of prompt-lookup drafting and speculative greedy decoding for the app cores (see generate.py).

- `drafter`: runtimes/drafters.py NgramDrafter driven through propose / observe on token histories (growing,
  sometimes rewound, with accepted counts drawn from a seeded generator): every proposal and the drafter's state
  after each observe.
- `runs`: a scripted model whose KV cache is a real PagedKVCache (one fp32 row per token holding the token id), so
  it sees exactly the rows the cache feeds: a greedy run with plain decoding and with n-gram speculation
  (runtimes/speculative.py Speculation, no tie guard, as in the apps), every model call's position and ids, the
  stats, and a second turn fed after the first like the apps' Conversation does.
"""

from __future__ import annotations

import json
import re

import numpy as np

FORMAT = 1
KV = {"heads": 1, "key_dim": 1, "value_dim": 1, "past_key": "past.{layer}.key", "present_key": "present.{layer}.key"}
TARGET_LOGIT = 20.0  # the scripted token's logit; every other logit is in [0, 9.99], so no greedy near-ties


def scripted_target(history: list[int], position: int, vocab: int, period: int) -> int:
    """The scripted model's next token after `history` (the rows it sees, the current token last).

    It copies: the token that followed the first earlier occurrence of the last 3, else 2, else 1 tokens, except at
    positions = period // 2 (mod period); there, or without an occurrence, 1 + a hash of the last two tokens and
    the position modulo vocab - 2 (so the hash never gives 0 or vocab - 1)."""
    if position % period != period // 2:
        for n in (3, 2, 1):
            tail = history[-n:]
            for j in range(len(history) - n):
                if history[j : j + n] == tail:
                    return history[j + n]
    previous = history[-2] if len(history) >= 2 else 0
    return 1 + (history[-1] * 7 + previous * 3 + position * 5) % (vocab - 2)


def scripted_logits(history: list[int], position: int, vocab: int, period: int) -> np.ndarray:
    """float32 logits from integers only (exact in every language): the target at TARGET_LOGIT + a small offset."""
    target = scripted_target(history, position, vocab, period)
    h = (target * 131 + position * 31) % 100003
    logits = np.array([((h + v * 7919) % 1000) / 100.0 for v in range(vocab)], dtype=np.float32)
    logits[target] = np.float32(TARGET_LOGIT + (h % 7) / 4.0)
    return logits


class ScriptedBackend:
    """A SpeculativeBackend over a PagedKVCache: each row's logits come from the fed rows + the call's tokens."""

    n_mtp = 0

    def __init__(self, context_length: int, vocab: int, period: int, paging: tuple[int, int, int]) -> None:
        from omnicoder.runtimes.kv_format import KVLayout
        from omnicoder.runtimes.kv_paging import PagedKVCache, PagingPolicy

        self.context_length, self.vocab, self.period = context_length, vocab, period
        page_len, window, sink_pages = paging
        self.layout = KVLayout(KV, 1)
        self.cache = PagedKVCache(self.layout, PagingPolicy(page_len=page_len, window=window, sink_pages=sink_pages))
        self.calls: list[list[int]] = []  # [first position, ids...] per model call

    def reset(self) -> None:
        self.cache.reset()

    @property
    def cache_length(self) -> int:
        return self.cache.length

    def verify(self, ids: list[int], positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append([positions[0], *ids])
        name = self.layout.inputs[0]
        seen = [int(v) for v in self.cache.feeds()[name][0, 0, :, 0]]
        rows = [scripted_logits(seen + ids[: i + 1], positions[i], self.vocab, self.period) for i in range(len(ids))]
        present = np.array(seen + ids, dtype=np.float32).reshape(1, 1, -1, 1)
        self.cache.update({name: present}, len(ids))
        return np.stack(rows), np.zeros((len(ids), 0, self.vocab), np.float32)

    def step(self, ids: list[int], positions: list[int]) -> np.ndarray:
        return self.verify(ids, positions)[0][-1]

    def truncate(self, length: int) -> None:
        self.cache.truncate(length)


def _code_like(rng: np.random.Generator, vocab: int) -> list[int]:
    """A prompt with repeated lines (input-grounded text): a few 'lines' reused with small edits."""
    lines = [list(rng.integers(1, vocab - 1, int(rng.integers(4, 9)))) for _ in range(4)]
    out: list[int] = []
    for i in range(10):
        line = list(lines[int(rng.integers(0, 4))])
        if i % 3 == 2:
            line[int(rng.integers(0, len(line)))] = int(rng.integers(1, vocab - 1))
        out += [int(t) for t in line] + [0]
    return out


RUN_CASES = [
    # name, vocab, period, context, prompt kind, max_new, k, stop ids, (page_len, window, sinks), second-turn prompt
    ("code", 48, 13, 512, "code", 80, 8, [47], (4, 0, 0), None),
    ("code-k3", 48, 11, 512, "code", 60, 3, [47], (4, 0, 0), None),
    ("free", 97, 2, 512, "random", 70, 8, [96], (8, 0, 0), None),
    ("eos-stop", 48, 13, 512, "code", 120, 8, [5, 9], (4, 0, 0), None),
    ("limit-inside-draft", 48, 29, 512, "code", 23, 8, [47], (4, 0, 0), None),
    ("context-stop", 48, 31, 120, "code", 100, 8, [47], (4, 0, 0), None),
    ("two-turns", 48, 17, 512, "code", 40, 6, [47], (4, 0, 0), [3, 4, 5, 6, 3, 4]),
    ("window", 48, 13, 10**9, "code", 90, 8, [47], (4, 24, 1), None),
]


def _prompt(kind: str, vocab: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    if kind == "code":
        return _code_like(rng, vocab)
    return [int(t) for t in rng.integers(1, vocab - 1, 40)]


def _turn(backend, ids: list[int], max_new: int, stops: list[int], k: int, fresh: bool) -> dict:
    """One turn, plain (k = 0) or speculative; afterwards the cache holds what plain decoding's would (the apps drop
    a last token a verify call cached, so the next turn feeds it as the pending token)."""
    from omnicoder.runtimes.decode_loop import continue_ids, generate_ids
    from omnicoder.runtimes.sampling import Sampler, SamplingParams
    from omnicoder.runtimes.speculative import Speculation

    sampler = Sampler(SamplingParams(0.0, 0, 1.0, 0))
    strategy = Speculation(backend, sampler, k, tie_margin=0.0, drafter="ngram") if k else None
    start, first_call = (0 if fresh else backend.cache_length), len(backend.calls)
    run = generate_ids if fresh else continue_ids
    out, stats = run(backend, ids, max_new, sampler, stops, None, strategy)
    sampled = len(out) + (1 if stats.stop_reason == "eos" else 0)
    plain_cache = start + len(ids) + sampled - 1
    trimmed = backend.cache_length - plain_cache  # 1 where the run ended on a draft its verify call cached
    if trimmed:
        assert backend.cache_length == plain_cache + 1, (backend.cache_length, plain_cache)
        backend.truncate(plain_cache)
    pending = None if stats.stop_reason == "eos" else out[-1]  # what the next turn feeds first
    return {
        "tokens": out,
        "stop_reason": stats.stop_reason,
        "pending": pending,
        "calls": backend.calls[first_call:],
        "draft_tokens": stats.draft_tokens,
        "accepted_tokens": stats.accepted_tokens,
        "cache_length": backend.cache_length,
        "trimmed": trimmed,
    }


def run_vectors() -> list[dict]:
    cases = []
    for seed, (name, vocab, period, context, kind, max_new, k, stops, paging, follow) in enumerate(RUN_CASES):
        prompt = _prompt(kind, vocab, 100 + seed)
        case = {
            "name": name,
            "vocab": vocab,
            "period": period,
            "context": context,
            "prompt": prompt,
            "max_new_tokens": max_new,
            "k": k,
            "stop_ids": stops,
            "paging": dict(zip(("page_len", "window", "sink_pages"), paging, strict=True)),
        }
        for mode, draft in (("plain", 0), ("speculative", k)):
            backend = ScriptedBackend(context, vocab, period, paging)
            turns = [_turn(backend, prompt, max_new, stops, draft, True)]
            if follow is not None:
                turns.append(_turn(backend, [turns[0]["pending"], *follow], max_new, stops, draft, False))
            case[mode] = turns
        if paging[1] == 0:  # without a window, verify rows are exactly plain decoding's
            for a, b in zip(case["plain"], case["speculative"], strict=True):
                assert a["tokens"] == b["tokens"] and a["stop_reason"] == b["stop_reason"], name
        case["second_turn_prompt"] = follow
        cases.append(case)
    return cases


DRAFTER_CASES = [
    # max_draft, max_ngram, min_ngram, patience, steps
    (8, 3, 2, 3, 60),
    (4, 3, 2, 3, 60),
    (6, 4, 1, 2, 70),
    (3, 2, 2, 1, 50),
    (1, 3, 3, 3, 40),
    (16, 5, 2, 4, 80),
]


def _history(rng: np.random.Generator, length: int) -> list[int]:
    """Tokens over a small alphabet with repeated runs, so that n-grams recur."""
    out: list[int] = []
    while len(out) < length:
        if out and rng.random() < 0.5:
            start = int(rng.integers(0, len(out)))
            out += out[start : start + int(rng.integers(2, 10))]
        else:
            out += [int(t) for t in rng.integers(0, 12, int(rng.integers(1, 5)))]
    return out[:length]


def drafter_vectors() -> list[dict]:
    from omnicoder.runtimes.drafters import NgramDrafter

    cases = []
    for index, (max_draft, max_ngram, min_ngram, patience, count) in enumerate(DRAFTER_CASES):
        rng = np.random.default_rng(500 + index)
        tokens = _history(rng, 400)
        drafter = NgramDrafter(max_draft, max_ngram, min_ngram, patience)
        steps, length = [], int(rng.integers(0, 6))
        for _ in range(count):
            roll = rng.random()
            if roll < 0.08 and length > 10:  # rewound (e.g. a new turn): the drafter re-indexes
                length = int(rng.integers(0, length))
            else:
                length = min(len(tokens), length + int(rng.integers(1, 9)))
            room = int(rng.integers(0, max_draft + 3))
            proposal = [t for t, _ in drafter.propose(tokens[:length], None, room, None)]
            full = bool(proposal) and rng.random() < 0.4
            accepted = len(proposal) if full else int(rng.integers(0, len(proposal) + 1))
            drafter.observe(len(proposal), accepted)
            state = [drafter.length, drafter._misses, drafter._pause, drafter._silent, drafter._indexed]
            steps.append({"history": length, "room": room, "proposal": proposal, "accepted": accepted, "state": state})
        cases.append(
            {
                "max_draft": max_draft,
                "max_ngram": max_ngram,
                "min_ngram": min_ngram,
                "patience": patience,
                "tokens": tokens,
                "steps": steps,
            }
        )
    return cases


def speculative_vectors() -> dict:
    return {
        "format": FORMAT,
        "drafter_state": ["length", "misses", "pause", "silent", "indexed"],
        "drafter": drafter_vectors(),
        "scripted_model": "a row sees the fed KV rows + the call's tokens up to it (history), at `position`: unless "
        "position % period == period // 2, target = the token after the first earlier occurrence of history[-n:] "
        "for n = 3, 2, 1 (the first n with one); else 1 + (history[-1]*7 + history[-2]*3 + position*5) % (vocab - 2) "
        "(history[-2] = 0 when absent); "
        "h = (target*131 + position*31) % 100003; logit[v] = float32(((h + v*7919) % 1000) / 100.0), "
        "logit[target] = float32(20.0 + (h % 7) / 4.0)",
        "kv": KV,
        "runs": run_vectors(),
    }


def _one_line(match: re.Match) -> str:
    return "[" + ", ".join(part.strip() for part in match.group(0)[1:-1].split(",") if part.strip()) + "]"


def speculative_json() -> str:
    """The file's text: indented, with lists of numbers on one line."""
    return re.sub(r"\[[-0-9.,\s]*\]", _one_line, json.dumps(speculative_vectors(), indent=1)) + "\n"
