"""Generation statistics and the stats line every runner prints to stderr. Torch-free."""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import asdict, dataclass


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""
    peak_rss_mb: float = 0.0
    model_calls: int = 0  # speculative decoding: verify calls after the prefill
    draft_tokens: int = 0  # speculative decoding: tokens drafted by the MTP heads
    accepted_tokens: int = 0  # ... and accepted

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        # the first generated token comes from the prefill logits; decode steps produce the rest
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "prefill_tok_s": round(self.prefill_tok_s, 2),
            "decode_tok_s": round(self.decode_tok_s, 2),
            "acceptance_rate": round(self.acceptance_rate, 4),
        }

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    def line(self) -> str:
        speculative = (
            f", speculative: {self.acceptance_rate:.0%} of {self.draft_tokens} drafts accepted, "
            f"{self.generated_tokens / max(self.model_calls, 1):.2f} tokens/call"
        )
        return (
            f"[stats] prompt tokens: {self.prompt_tokens}, generated: {self.generated_tokens} ({self.stop_reason}), "
            f"prefill: {self.prefill_tok_s:.1f} tok/s, decode: {self.decode_tok_s:.1f} tok/s, "
            f"peak RSS: {self.peak_rss_mb:.0f} MiB{speculative if self.draft_tokens else ''}"
        )

    def json(self) -> str:
        return json.dumps(self.to_dict())
