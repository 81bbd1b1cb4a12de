"""Vectors of the KV layout, the paged KV store and the memory-based paging plan (see generate.py)."""

from __future__ import annotations

import numpy as np

FORMAT = 1


# ---- KV layout, paging and memory sizing ------------------------------------------------------------------


def _configs():
    from omnicoder.presets import gqa_test_config, mla_test_config, omnicoder_tiny

    return {"gqa": gqa_test_config(), "mla": mla_test_config(), "tiny": omnicoder_tiny()}


def kv_layout_vectors() -> dict:
    from omnicoder.export.bundle_writer import kv_contract, paging_sidecar
    from omnicoder.runtimes.kv_format import KVLayout

    from omnicoder.kv_quant import KVQuantSpec

    cases = []
    for name, config in _configs().items():
        for dtype in ("fp32", "fp16", "u8", "nf4"):
            spec = KVQuantSpec(dtype=dtype)
            kv = kv_contract(config, spec)
            layout = KVLayout(kv, config.n_layers)
            cases.append(
                {
                    "name": f"{name}-{dtype}",
                    "n_layers": config.n_layers,
                    "kv": kv,
                    "sidecar": paging_sidecar(config, 64, spec),
                    "inputs": layout.inputs,
                    "outputs": layout.outputs,
                    "widths": layout.widths,
                    "dtypes": [d.name for d in layout.dtypes],
                    "key_slots": layout.key_slots,
                    "bytes_per_token": layout.bytes_per_token(),
                }
            )
    return {"format": FORMAT, "cases": cases}


def _fake_presents(layout, start: int, count: int) -> dict:
    """Present rows whose value is 10 * token index + head (fp32 inputs), so feeds tell which tokens they hold."""
    out = {}
    for name, width, dtype in zip(layout.inputs, layout.widths, layout.dtypes, strict=True):
        tokens = np.arange(start, start + count, dtype=np.float64)
        heads = np.arange(layout.heads, dtype=np.float64)
        rows = 10 * tokens[None, :, None] + heads[:, None, None] + np.zeros((1, 1, width))
        out[name] = rows[None].astype(dtype)
    return out


PAGE_CASES = [
    # page_len, window, sink_pages, update sizes (prefill chunks then single tokens)
    (4, 0, 0, [3, 1, 1, 4, 1]),
    (4, 6, 0, [4, 4, 1, 1, 1, 1, 1, 1, 1]),
    (4, 6, 1, [4, 4, 4, 1, 1, 1, 1, 1]),
    (3, 5, 2, [3, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1]),
    (8, 8, 1, [8, 8, 8, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
    (2, 1, 0, [2, 1, 1, 1]),
]


def paging_vectors() -> dict:
    from omnicoder.export.bundle_writer import kv_contract, paging_sidecar
    from omnicoder.runtimes.kv_budget import PageBudget, plan_paging
    from omnicoder.runtimes.kv_format import KVLayout
    from omnicoder.runtimes.kv_paging import PagedKVCache, PagingPolicy

    from omnicoder.kv_quant import KVQuantSpec

    configs = _configs()
    pages = []
    for model in ("gqa", "mla"):
        config = configs[model]
        layout = KVLayout(kv_contract(config), config.n_layers)
        for page_len, window, sinks, updates in PAGE_CASES:
            cache = PagedKVCache(layout, PagingPolicy(page_len=page_len, window=window, sink_pages=sinks))
            steps = []
            for count in updates:
                attended = cache.feeds()
                fed = attended[layout.inputs[0]][0, 0, :, 0]
                before = [int(round(v / 10)) for v in fed]
                cache.update(_fake_presents(layout, cache.length, count), count)
                steps.append(
                    {
                        "new_tokens": count,
                        "fed_tokens": before,
                        "length": cache.length,
                        "pages": [[p.start, p.filled] for p in cache.pages],
                        "attended": cache.attended_pages(),
                    }
                )
            pages.append(
                {
                    "model": model,
                    "page_len": page_len,
                    "window": window,
                    "sink_pages": sinks,
                    "n_layers": config.n_layers,
                    "kv": kv_contract(config),
                    "steps": steps,
                }
            )
    sizing = []
    for name, dtype in (("tiny", "fp32"), ("gqa", "fp16"), ("mla", "u8")):
        config = configs[name]
        sidecar = paging_sidecar(config, 64 if name == "tiny" else 16, KVQuantSpec(dtype=dtype))
        page_budget = PageBudget.from_sidecar(sidecar)
        for context in (config.max_seq_len, 4 * config.max_seq_len, 32768):
            for budget in (
                0,
                page_budget.page_bytes * 2,
                page_budget.page_bytes * 3 + 5,
                300_000,
                1 << 20,
                1 << 30,
            ):
                plan = plan_paging(page_budget, context, budget, config.max_seq_len)
                sizing.append(
                    {
                        "sidecar": sidecar,
                        "context": context,
                        "budget_bytes": budget,
                        "model_context": config.max_seq_len,
                        "page_bytes": page_budget.page_bytes,
                        "plan": None if plan is None else plan.to_dict(),
                    }
                )
    return {"format": FORMAT, "pages": pages, "sizing": sizing}
