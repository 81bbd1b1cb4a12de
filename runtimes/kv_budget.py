"""KV-cache arithmetic from a bundle's paging sidecar (model.kv_paging.json): bytes per token, per page, at a
context, and the paged settings that fit a RAM budget. Torch-free; shared by kv_budget_enforce and
mobile_budget_check. See docs/kv_budget.md.

MB means MiB (1,048,576 bytes) everywhere, as in the runners' peak-RSS figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from omnicoder.runtimes.kv_format import ELEMENT_BYTES, KV_DTYPES, QUANT_GROUP, row_bytes
from omnicoder.runtimes.kv_window import SLACK

from omnicoder.errors import OmniCoderError

MB = 1 << 20
# similarity-fetched pages per step (the runner's --predicted-pages, scored with the graph's query outputs). 0: on
# omnicoder-tiny they cost quality (a fetched page sits at a RoPE distance past the trained context; measured in
# docs/benchmarks.md). Raise it (4 is typical) for models trained on long contexts.
MAX_PREDICTED_PAGES = 0
CONTEXT_UNBOUNDED = 1 << 24  # max_context when every layer attends a window (the bundle schema's context bound)


def _per_layer(sidecar: dict, scalar: str, listed: str) -> list[int]:
    n_layers = sidecar["n_layers"]
    if listed in sidecar:
        values = list(sidecar[listed])
        if len(values) != n_layers:
            raise OmniCoderError(
                f"the paging sidecar's {listed} has {len(values)} entries for {n_layers} layers; re-export the bundle"
            )
        return values
    return [sidecar[scalar]] * n_layers


def layer_widths(sidecar: dict) -> list[tuple[int, int, int]]:
    """(heads, key width, value width) per layer.

    `key_dim`/`value_dim` are single widths, used as given when every layer has the same `dl`; with
    `dl_per_layer` a layer's key is `dl + rope_dim` and its value `dl`. `value_dim` 0 (MLA: the values are the
    key's latent columns) always means no value row.
    """
    heads = _per_layer(sidecar, "heads", "heads_per_layer")
    dls = _per_layer(sidecar, "dl", "dl_per_layer")
    uniform = "dl_per_layer" not in sidecar
    rope = sidecar.get("rope_dim", 0)
    widths = []
    for h, dl in zip(heads, dls, strict=True):
        key = sidecar["key_dim"] if uniform and "key_dim" in sidecar else dl + rope
        if sidecar.get("value_dim") == 0:
            value = 0
        else:
            value = sidecar["value_dim"] if uniform and "value_dim" in sidecar else dl
        widths.append((h, key, value))
    return widths


def bytes_per_token_per_layer(sidecar: dict, kv_dtype: str | None = None) -> list[float]:
    """KV bytes one token takes in each layer: the sidecar's `bytes_per_token_per_layer` when it describes the
    dtype asked for (default: the sidecar's `kv_dtype`), else computed from the widths."""
    own = sidecar.get("kv_dtype", "fp32")
    dtype = kv_dtype or own
    if dtype not in ELEMENT_BYTES:
        raise OmniCoderError(f"unknown KV dtype {dtype!r}; choose one of {', '.join(KV_DTYPES)}")
    if dtype == own and "bytes_per_token_per_layer" in sidecar:
        return [float(sidecar["bytes_per_token_per_layer"])] * sidecar["n_layers"]
    group = sidecar.get("kv_group") or QUANT_GROUP
    return [float(h * (row_bytes(k, dtype, group) + row_bytes(v, dtype, group))) for h, k, v in layer_widths(sidecar)]


@dataclass(frozen=True)
class PageBudget:
    """What a paged KV cache holds per page, for one KV dtype (PageBudget in the app cores).

    `windows` (the manifest's graph.kv.windows; empty: none) are per-layer sliding windows: the runner then keeps
    at most `window - 1 + 2 * SLACK` rows of such a layer (runtimes/kv_window.py), which `bytes_at` counts."""

    kv_dtype: str
    page_len: int
    n_layers: int
    bytes_per_token: float  # all layers
    page_bytes: int
    layer_bytes: tuple[float, ...] = ()  # per layer, bytes per token (with windows)
    windows: tuple[int, ...] = ()

    @classmethod
    def from_sidecar(cls, sidecar: dict, kv_dtype: str | None = None, windows: list[int] | None = None) -> PageBudget:
        per_layer, page_len = bytes_per_token_per_layer(sidecar, kv_dtype), sidecar["page_len"]
        dtype, per_token = kv_dtype or sidecar.get("kv_dtype", "fp32"), sum(per_layer)
        held = tuple(per_layer) if windows and any(windows) else ()
        return cls(
            dtype,
            page_len,
            len(per_layer),
            per_token,
            math.ceil(page_len * per_token),
            held,
            tuple(windows or ()) if held else (),
        )

    def pages(self, context: int) -> int:
        return math.ceil(context / self.page_len)

    def _window_rows(self, window: int) -> int:
        return window - 1 + 2 * SLACK

    def bytes_at(self, context: int) -> int:
        """KV bytes held for `context` tokens: whole pages, or with windows the rows each layer keeps at most."""
        if not self.windows:
            return self.pages(context) * self.page_bytes
        rows = [min(context, self._window_rows(w)) if w else context for w in self.windows]
        return math.ceil(sum(b * r for b, r in zip(self.layer_bytes, rows, strict=True)))

    def max_context(self, budget_bytes: float) -> int:
        """The longest context (whole pages) whose KV fits in `budget_bytes`."""
        if not self.page_bytes:
            return 0
        if not self.windows:
            return max(0, int(budget_bytes // self.page_bytes)) * self.page_len
        full = sum(b for b, w in zip(self.layer_bytes, self.windows, strict=True) if not w)
        fixed = sum(b * self._window_rows(w) for b, w in zip(self.layer_bytes, self.windows, strict=True) if w)
        if not full:  # every layer windowed: any context fits once the windows do
            return CONTEXT_UNBOUNDED if budget_bytes >= fixed else 0
        return max(0, int((budget_bytes - fixed) // (full * self.page_len))) * self.page_len


@dataclass(frozen=True)
class PagingPlan:
    """Settings for the paging runner, and what they cost."""

    context: int
    budget_bytes: int
    fits_whole: bool  # the whole context stays resident: no eviction, nothing spilled
    window: int
    sink_pages: int
    predicted_pages: int
    resident_pages: int
    resident_bytes: int
    total_bytes: int
    spill_bytes: int

    def runner_flags(self, budget_mb: float) -> str:
        """Flags for onnx_decode_generate.py; empty when the whole context stays resident (no paging needed)."""
        if self.fits_whole:
            return ""
        predicted = f" --predicted-pages {self.predicted_pages}" if self.predicted_pages else ""
        return f"--window {self.window} --sink-pages {self.sink_pages}{predicted} --kv-ram-budget-mb {budget_mb:g}"

    def to_dict(self) -> dict:
        return asdict(self)


MIN_PAGED_PAGES = 3  # 1 sink page + 1 window page + 1 partially filled tail page


def plan_paging(
    layout: PageBudget, context: int, budget_bytes: int, model_context: int | None = None
) -> PagingPlan | None:
    """The largest window (with 1 sink page and up to MAX_PREDICTED_PAGES predicted pages) whose resident KV
    fits `budget_bytes`, where the attended pages (sink + window + predicted + 1 tail) also stay within the
    model's context; None when not even the minimum (1 sink + 1 window + tail page) fits. The whole context is
    kept, with no paging, when it fits the budget and the model's context."""
    total = layout.bytes_at(context)
    limit = model_context or context
    if total <= budget_bytes and context <= limit:
        pages = layout.pages(context)
        return PagingPlan(context, budget_bytes, True, context, 0, 0, pages, total, total, 0)
    budget_pages = min(budget_bytes // layout.page_bytes, layout.pages(context))
    attendable_pages = limit // layout.page_len
    if budget_pages < MIN_PAGED_PAGES or attendable_pages < MIN_PAGED_PAGES:
        return None
    free = min(budget_pages, attendable_pages) - 2  # after the sink page and the tail page
    predicted = min(MAX_PREDICTED_PAGES, (free - 1) // 2)  # the window always gets more pages than prediction
    window = (free - predicted) * layout.page_len
    resident = min(budget_pages * layout.page_bytes, total)
    return PagingPlan(
        context, budget_bytes, False, window, 1, predicted, budget_pages, resident, total, total - resident
    )


def mb(n_bytes: float) -> str:
    """Bytes as MB (MiB), three significant digits (more for tiny models' KiB-sized pages)."""
    value = abs(n_bytes) / MB
    sign = "-" if n_bytes < 0 else ""
    if value == 0 or value >= 100:
        return f"{sign}{value:.0f}"
    return f"{sign}{value:.{max(1, 2 - math.floor(math.log10(value)))}f}"


def mb_at_least(n_bytes: float) -> float:
    """Bytes as MB rounded up to three significant digits: a budget that is sure to hold them."""
    value = n_bytes / MB
    if value <= 0:
        return 0.0
    scale = 10 ** max(0, 2 - math.floor(math.log10(value)))
    return math.ceil(value * scale - 1e-9) / scale


def open_for_sizes(path: str, requested_context: int | None):
    """(bundle, its paging sidecar, --context or the model's context) of a bundle read only for its sizes and that
    sidecar: the weights are never read."""
    from omnicoder.runtimes.bundle import open_bundle

    bundle = open_bundle(path, verify=False)
    sidecar = bundle.sidecar("kv_paging")
    if sidecar is None:
        raise OmniCoderError(f"bundle {bundle.path} has no kv_paging sidecar; re-export it with omnicoder-export")
    context = requested_context
    if context is None:
        context = bundle.model.get("context_length") or sidecar["context_length"]
    if context < 1:
        raise OmniCoderError(f"--context must be a positive number of tokens, got {context}")
    return bundle, sidecar, context


def weights_bytes(manifest: dict) -> int:
    """Bytes of the model files in the manifest's file list: the graph file and its external data
    (model.onnx.data, ...), not the tokenizer, sidecars or anything else in the bundle."""
    graph = manifest["graph"]["file"]
    return sum(
        e["bytes"]
        for name, e in manifest["files"].items()
        if name == graph or name.startswith((graph + ".", graph + "/"))
    )
