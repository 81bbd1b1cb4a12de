"""What the provider bench measures and decides, as plain dataclasses that serialize to provider_bench.json.
Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Check:
    """One gate: passes when `measured >= threshold` (a missing threshold fails: nothing to compare with)."""

    provider: str
    name: str
    measured: float
    threshold: float | None
    note: str = ""
    indicative: bool = False  # the threshold is a placeholder, not measured on this device class

    @property
    def passed(self) -> bool:
        return self.threshold is not None and self.measured >= self.threshold

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class Speed:
    """Prefill and decode throughput of one provider: medians after a warm-up."""

    threads: int
    prefill_tokens: int
    decode_steps: int
    repeats: int
    warmup_steps: int
    prefill_tok_s: float  # median over `repeats` prefills of `prefill_tokens` from an empty cache
    decode_tok_s: float  # 1 / median step time over repeats x decode_steps single-token steps
    decode_p10_tok_s: float  # the fastest tenth of steps (what the machine can do when left alone)
    decode_p90_tok_s: float  # the slowest tenth (noise: preemption, other processes)
    prefill_samples: list[float] = field(default_factory=list)


@dataclass
class SpeculativeSpeed:
    """Greedy decoding of an input-grounded prompt, plain vs prompt-lookup drafts (reported, not gated)."""

    drafter: str
    max_draft: int
    generated: int
    plain_decode_tok_s: float
    decode_tok_s: float
    tokens_per_call: float  # generated tokens / model calls
    acceptance_rate: float  # accepted drafts / drafted tokens
    same_tokens: bool  # the output equals plain greedy decoding's


@dataclass
class ProbeSpeed:
    """The calibration probe's speed in one bench run (omnicoder.runtimes.bench_calibration)."""

    version: int
    decode_runs_s: float  # 1 / median one-row run time over all rounds
    prefill_rows_s: float  # median over rounds of rows / time of one prefill_tokens-row run


@dataclass
class ProviderResult:
    provider: str
    status: str  # "measured" | "skipped"
    reason: str = ""
    ops: dict[str, int] = field(default_factory=dict)
    inventory_source: str = ""  # "optimized graph" or "profile" (when the provider compiles nodes)
    optimized_graph: str | None = None
    ops_by_provider: dict[str, dict[str, int]] = field(default_factory=dict)
    session_seconds: float = 0.0
    speed: Speed | None = None
    speculative: SpeculativeSpeed | None = None
    calibration: ProbeSpeed | None = None  # the calibration probe's speed in the same run (calibrated profiles)
    peak_rss_mb: float = 0.0
    rss_growth_mb: float | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "measured" and all(check.passed for check in self.checks)

    def ratios(self) -> dict[str, float] | None:
        """tok/s divided by the calibration probe's speed: decode / one-row runs/s, prefill / rows/s."""
        if self.speed is None or self.calibration is None:
            return None
        return {
            "decode": round(self.speed.decode_tok_s / self.calibration.decode_runs_s, 4),
            "prefill": round(self.speed.prefill_tok_s / self.calibration.prefill_rows_s, 4),
        }

    def to_dict(self) -> dict:
        checks = [check.to_dict() for check in self.checks]
        return {**asdict(self), "checks": checks, "calibrated_ratios": self.ratios(), "passed": self.passed}
