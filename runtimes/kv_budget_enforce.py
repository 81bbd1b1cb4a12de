"""Pick KV paging settings that fit a RAM budget, from a bundle's paging sidecar.

    omnicoder-kv-budget --bundle DIR --budget-mb N [--context N] [--json]
    python runtimes/kv_budget_enforce.py ...   (the same)

When the whole context's KV fits in --budget-mb it is kept resident (window = context). Otherwise: 1 sink page,
up to 4 predicted pages and the largest window that fits; the rest of the context's KV spills to the runner's
memory-mapped file. Prints the plan and the paging runner's flags (--json: a JSON object on stdout's last line).
Exits 1 when nothing fits (the minimum of 1 sink + 1 window + 1 tail page, or the sidecar's spill_bytes), with
the numbers and the fix; 2 on bad input. See docs/kv_budget.md.
"""

from __future__ import annotations

import json
import sys

from omnicoder.runtimes.kv_budget import (
    MB,
    MIN_PAGED_PAGES,
    PageBudget,
    PagingPlan,
    mb,
    mb_at_least,
    open_for_sizes,
    plan_paging,
)

from omnicoder.cliutil import MEGABYTES, TOKENS, ArgumentParser
from omnicoder.errors import OmniCoderError, cli_main

QUANTIZED_KV = ("u8", "nf4")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="omnicoder-kv-budget", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle directory written by omnicoder-export")
    p.add_argument("--budget-mb", type=MEGABYTES, required=True, help="RAM for resident KV, in MB (MiB)")
    p.add_argument("--context", type=TOKENS, help="tokens of context to plan for (default: the model's context)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON on stdout's last line")
    return p


def quantized_hint(sidecar: dict, layout: PageBudget, bytes_needed: float) -> str:
    """' or export with --kv u8 (...) / nf4 (...)' scaled from `bytes_needed` at the current dtype."""
    if layout.kv_dtype in QUANTIZED_KV:
        return ""
    parts = []
    for dtype in QUANTIZED_KV:
        other = PageBudget.from_sidecar(sidecar, dtype)
        parts.append(f"{dtype}: {mb_at_least(bytes_needed * other.page_bytes / layout.page_bytes)} MB")
    return f", or export with --kv u8/nf4 ({', '.join(parts)})"


def unfit_reason(
    sidecar: dict, layout: PageBudget, plan: PagingPlan | None, context: int, budget_mb: float, model_context: int
) -> str:
    """Why the plan does not fit, with the numbers and the fix; '' when it fits."""
    if plan is None and model_context // layout.page_len < MIN_PAGED_PAGES:
        return (
            f"pages of {layout.page_len} tokens are too long for the model's context ({model_context}): paging "
            f"attends at least {MIN_PAGED_PAGES} pages (1 sink + 1 window + 1 tail); re-export with --page-len "
            f"{max(1, model_context // (2 * MIN_PAGED_PAGES))} or less"
        )
    if plan is None:
        need = MIN_PAGED_PAGES * layout.page_bytes
        return (
            f"--budget-mb {budget_mb:g} holds {int(budget_mb * MB) // layout.page_bytes} KV page(s) of "
            f"{layout.page_bytes} bytes ({layout.page_len} tokens, kv {layout.kv_dtype}); paging needs at least "
            f"{MIN_PAGED_PAGES} (1 sink + 1 window + 1 tail page) = {mb(need)} MB: raise --budget-mb to at least "
            f"{mb_at_least(need)}{quantized_hint(sidecar, layout, need)}"
        )
    limit = sidecar.get("spill_bytes")
    if limit is None or plan.spill_bytes <= limit:
        return ""
    need = min(plan.total_bytes, -(-(plan.total_bytes - limit) // layout.page_bytes) * layout.page_bytes)
    max_context = (plan.resident_pages + limit // layout.page_bytes) * layout.page_len
    return (
        f"context {context} spills {mb(plan.spill_bytes)} MB ({plan.spill_bytes} bytes) of KV to the memory-mapped "
        f"file at --budget-mb {budget_mb:g}, over the sidecar's spill_bytes {mb(limit)} MB ({limit} bytes): raise "
        f"--budget-mb to at least {mb_at_least(need)}, lower --context to at most {max_context}"
        f"{quantized_hint(sidecar, layout, need)}"
    )


def print_plan(bundle, layout: PageBudget, plan: PagingPlan | None, context: int, budget_mb: float, limit) -> None:
    model = bundle.model
    print(
        f"omnicoder-kv-budget: {bundle.path} ({model['name']}, {model['attention']}, {layout.n_layers} layers), "
        f"KV {layout.kv_dtype}, pages of {layout.page_len} tokens"
    )
    per_layer = layout.bytes_per_token / layout.n_layers
    rows = [
        ("KV per token", f"{layout.bytes_per_token:g} bytes ({per_layer:g} per layer, mean)"),
        ("page", f"{layout.page_len} tokens = {layout.page_bytes} bytes ({mb(layout.page_bytes)} MB)"),
        (
            f"KV at context {context}",
            f"{layout.pages(context)} pages = {layout.bytes_at(context)} bytes ({mb(layout.bytes_at(context))} MB)",
        ),
        ("RAM budget", f"{budget_mb:g} MB = {int(budget_mb * MB) // layout.page_bytes} pages"),
    ]
    if plan is not None:
        paged = (
            f"window {plan.window} tokens ({plan.window // layout.page_len} pages) + {plan.sink_pages} sink page + "
            f"{plan.predicted_pages} predicted pages + 1 tail page"
        )
        whole = f"whole context resident (window {plan.window} tokens, no eviction)"
        rows.append(("plan", whole if plan.fits_whole else paged))
        rows.append(
            ("resident", f"{plan.resident_pages} pages = {plan.resident_bytes} bytes ({mb(plan.resident_bytes)} MB)")
        )
        allowed = "no limit in the sidecar" if limit is None else f"sidecar spill_bytes {limit}"
        rows.append(("spill (mmap file)", f"{plan.spill_bytes} bytes ({mb(plan.spill_bytes)} MB); {allowed}"))
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    if context > model["context_length"]:
        print(f"  note: context {context} is beyond the model's context_length {model['context_length']}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.budget_mb > 0:
        raise OmniCoderError(f"--budget-mb must be a positive number of MB, got {args.budget_mb:g}")
    bundle, sidecar, context = open_for_sizes(args.bundle, args.context)
    layout = PageBudget.from_sidecar(sidecar, windows=bundle.graph["kv"].get("windows"))
    plan = plan_paging(layout, context, int(args.budget_mb * MB), bundle.model["context_length"])
    reason = unfit_reason(sidecar, layout, plan, context, args.budget_mb, bundle.model["context_length"])
    need = layout.bytes_at(bundle.model["context_length"])
    if bundle.shared_kv:  # --kv-io shared: the buffers grow (doubling) up to the model's whole context and cannot page
        plan, reason = None, None
        if need > args.budget_mb * MB:
            reason = (
                f"this --kv-io shared bundle's KV grows to its whole context: {need} bytes ({mb(need)} MB) > "
                f"{args.budget_mb:g} MB; re-export it with --kv-io present to page or window the KV cache"
            )
    print_plan(bundle, layout, plan, context, args.budget_mb, sidecar.get("spill_bytes"))
    if bundle.shared_kv:
        print(f"  shared KV buffers: up to {need} bytes at the full context (they double as the run grows)")
    flags = plan.runner_flags(args.budget_mb) if plan is not None and not reason else None
    if flags:
        print(f"runner flags: {flags}")
    if args.json:
        result = {
            "format": "omnicoder-kv-budget",
            "bundle": str(bundle.path),
            "fits": not reason,
            "error": reason or None,
            "kv_dtype": layout.kv_dtype,
            "context": context,
            "budget_mb": args.budget_mb,
            "page_len": layout.page_len,
            "page_bytes": layout.page_bytes,
            "bytes_per_token": layout.bytes_per_token,
            "spill_limit_bytes": sidecar.get("spill_bytes"),
            "plan": plan.to_dict() if plan is not None else None,
            "runner_flags": flags,
        }
        print(json.dumps(result))
    if reason:
        print(f"error: does not fit: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
