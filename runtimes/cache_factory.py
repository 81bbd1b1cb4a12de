"""Which KV cache a bundle and the KV flags get: the one place for the rules between the caches. Torch-free.

Shared buffers exclude paging and retention, paging and retention exclude each other, a paging window must fit
the model's context, and predicted pages / H2O need a graph that outputs queries.
"""

from __future__ import annotations

from collections.abc import Callable

from omnicoder.runtimes.bundle import Bundle
from omnicoder.runtimes.kv_cache import ContiguousKVCache, KVCache, SharedKVCache
from omnicoder.runtimes.kv_format import KVLayout
from omnicoder.runtimes.kv_paging import PagedKVCache, PagingPolicy
from omnicoder.runtimes.kv_retention import RetentionKVCache, RetentionPolicy, query_scale
from omnicoder.runtimes.kv_window import WindowedKVCache

from omnicoder.errors import OmniCoderError

SHARED_KV_START = 256  # tokens the shared KV buffers hold at first (--kv-io shared); they double up to the context


def check_exclusive(paging: bool, retention: bool) -> None:
    """KV paging and retention are two eviction policies; a run takes one."""
    if paging and retention:
        raise OmniCoderError("--retention and the KV paging flags are exclusive; drop --window/--kv-ram-budget-mb")


def make_cache(
    bundle: Bundle,
    layout: KVLayout,
    paging: PagingPolicy | None,
    retention: RetentionPolicy | None,
    output_names: list[str],
    make_buffer: Callable | None = None,
) -> KVCache:
    """The cache for a bundle's graph (`output_names`: what it can return) under the KV policies given;
    `make_buffer(shape, dtype)` allocates the buffers of a --kv-io shared bundle."""
    context = bundle.model["context_length"]
    if bundle.shared_kv:
        if paging is not None or retention is not None:
            raise OmniCoderError(
                "this bundle keeps its KV in shared fixed-capacity buffers (--kv-io shared); paging and "
                "retention need a bundle exported with --kv-io present"
            )
        from omnicoder.runtimes.graph_checks import check_allocation  # (imports onnxruntime: shared KV is onnx's)

        check_allocation(
            context * layout.bytes_per_token(),
            f"this --kv-io shared bundle's KV buffers for its context of {context} tokens",
            "re-export it with a shorter --context or with --kv-io present",
        )
        # sized by what the run uses: a few hundred tokens, doubled as the context grows (not the whole context)
        return SharedKVCache(layout, min(context, SHARED_KV_START), context, make_buffer)
    check_exclusive(paging is not None, retention is not None)
    kv, n_layers = bundle.graph["kv"], bundle.model["n_layers"]
    queries = [kv["query"].format(layer=i) for i in range(n_layers)] if kv.get("query") else []
    if retention is not None:
        if retention.policy == "learned" and not bundle.model["retention_head"]:
            raise OmniCoderError("--retention learned needs a model with a retention head; use streaming or h2o")
        h2o = retention.policy == "h2o"
        _check_queries("--retention h2o" if h2o else None, queries, output_names)
        return RetentionKVCache(layout, retention, query_scale(bundle.model), queries if h2o else None)
    if paging is None:
        return WindowedKVCache(layout) if any(layout.windows) else ContiguousKVCache(layout)
    if paging.page_len > context:
        raise OmniCoderError(f"--page-len {paging.page_len} is longer than the model's context ({context}); lower it")
    attended = paging.window + (paging.sink_pages + paging.predicted_pages + 1) * paging.page_len
    if paging.window > 0 and attended > context:
        raise OmniCoderError(
            f"--window {paging.window} with {paging.sink_pages} sink page(s) of {paging.page_len} tokens "
            f"attends up to {attended} tokens, more than the model's context ({context}); lower --window"
        )
    predicted = paging.predicted_pages > 0
    keys = [names[0] for names in layout.key_slots]  # a layer's queries score its key codes' summaries
    _check_queries("--predicted-pages" if predicted else None, queries, output_names)
    return PagedKVCache(layout, paging, queries=dict(zip(queries, keys, strict=True)) if predicted else None)


def _check_queries(flag: str | None, queries: list[str], output_names: list[str]) -> None:
    """A policy that scores with queries (`flag`) needs a graph that returns them."""
    if flag is None:
        return
    if not queries:
        raise OmniCoderError(f"{flag} needs a bundle whose graph outputs queries; re-export it with --query-outputs")
    missing = sorted(set(queries) - set(output_names))
    if missing:
        raise OmniCoderError(
            f"manifest.json names query outputs ({missing[0]}) the graph does not have; re-export the bundle "
            "with --query-outputs"
        )
