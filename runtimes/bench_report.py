"""The provider bench's HTML page: verdict, the checks table, tok/s per provider against the floors, and the
history of measurements over time. Plots are inline SVG drawn here: no plotting library needed. Torch-free."""

from __future__ import annotations

from html import escape

WIDTH, BAR_H, GAP, LEFT = 640, 22, 10, 190
PASS, FAIL, FLOOR = "#2e7d32", "#c62828", "#222"
KINDS = ("decode", "prefill")
SERIES = ("#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#558b2f")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def bar_chart(title: str, rows: list[tuple[str, float, float | None]]) -> str:
    """Horizontal bars of measured tok/s, with each floor as a vertical tick; red where below the floor."""
    if not rows:
        return ""
    top = max(max(m, f or 0) for _, m, f in rows) * 1.15 or 1.0
    span = WIDTH - LEFT - 20
    height = 30 + len(rows) * (BAR_H + GAP)
    parts = [f'<svg width="{WIDTH}" height="{height}" role="img" aria-label="{escape(title)}">']
    parts.append(f'<text x="0" y="16" font-weight="bold">{escape(title)}</text>')
    for i, (label, measured, floor) in enumerate(rows):
        y = 28 + i * (BAR_H + GAP)
        ok = floor is not None and measured >= floor
        width = max(span * measured / top, 1)
        parts.append(f'<text x="0" y="{y + 15}" font-size="12">{escape(label)}</text>')
        parts.append(
            f'<rect x="{LEFT}" y="{y}" width="{width:.1f}" height="{BAR_H}" fill="{PASS if ok else FAIL}">'
            f"<title>{escape(label)}: {_fmt(measured)} tok/s, floor {_fmt(floor)}</title></rect>"
        )
        parts.append(f'<text x="{LEFT + width + 4:.1f}" y="{y + 15}" font-size="11">{_fmt(measured)}</text>')
        if floor is not None:
            x = LEFT + span * floor / top
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 3}" y2="{y + BAR_H + 3}" stroke="{FLOOR}" stroke-width="3">'
                f"<title>floor {_fmt(floor)} tok/s</title></line>"
            )
    parts.append("</svg>")
    return "".join(parts)


def history_chart(title: str, series: dict[str, list[tuple[str, float]]], floors: dict[str, float]) -> str:
    """Lines of tok/s per series over the measurements' order (time labels at both ends), floors dashed."""
    points = [value for values in series.values() for _, value in values] + list(floors.values())
    if not points:
        return ""
    height, bottom, plot_w = 260, 220, WIDTH - 90
    top = max(points) * 1.15 or 1.0
    times = sorted({t for values in series.values() for t, _ in values})
    index = {t: i for i, t in enumerate(times)}

    def xy(t: str, value: float) -> str:
        x = 60 + plot_w * (index[t] / max(len(times) - 1, 1))
        return f"{x:.1f},{bottom - (bottom - 30) * value / top:.1f}"

    parts = [f'<svg width="{WIDTH}" height="{height + 20 * len(series)}" role="img" aria-label="{escape(title)}">']
    parts.append(f'<text x="0" y="16" font-weight="bold">{escape(title)}</text>')
    parts.append(f'<line x1="60" x2="{60 + plot_w}" y1="{bottom}" y2="{bottom}" stroke="#999"/>')
    parts.append(
        f'<text x="0" y="34" font-size="11">{_fmt(top)}</text><text x="0" y="{bottom}" font-size="11">0</text>'
    )
    if times:
        parts.append(f'<text x="60" y="{bottom + 16}" font-size="10">{escape(times[0][:16])}</text>')
        end = escape(times[-1][:16])
        parts.append(f'<text x="{60 + plot_w}" y="{bottom + 16}" font-size="10" text-anchor="end">{end}</text>')
    for i, (name, values) in enumerate(sorted(series.items())):
        color = SERIES[i % len(SERIES)]
        coords = " ".join(xy(t, v) for t, v in sorted(values))
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for t, v in values:
            cx, cy = xy(t, v).split(",")
            parts.append(
                f'<circle cx="{cx}" cy="{cy}" r="3" fill="{color}"><title>{escape(t)}: {_fmt(v)}</title></circle>'
            )
        if name in floors:
            y = bottom - (bottom - 30) * floors[name] / top
            parts.append(
                f'<line x1="60" x2="{60 + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" stroke-dasharray="6 4"/>'
            )
        parts.append(
            f'<text x="60" y="{height + 4 + 20 * i}" font-size="12" fill="{color}">{escape(name)} '
            "(solid: measured, dashed: floor)</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def checks_table(report: dict) -> str:
    rows = []
    for provider in report["providers"]:
        if provider["status"] != "measured":
            rows.append(
                f"<tr><td>{escape(provider['provider'])}</td><td colspan=3>{escape(provider['reason'])}</td>"
                f"<td>{escape(provider['status'])}</td><td></td></tr>"
            )
        for check in provider["checks"]:
            verdict = "pass" if check["passed"] else "FAIL"
            threshold = "none" if check["threshold"] is None else f"&ge; {_fmt(check['threshold'])}"
            if check["indicative"]:
                threshold += " (indicative)"
            rows.append(
                f"<tr class={verdict.lower()}><td>{escape(check['provider'])}</td><td>{escape(check['name'])}</td>"
                f"<td>{_fmt(check['measured'])}</td><td>{threshold}</td><td>{verdict}</td>"
                f"<td>{escape(check['note'])}</td></tr>"
            )
    head = "<tr><th>provider</th><th>check</th><th>measured</th><th>threshold</th><th>result</th><th>note</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def render(report: dict, history: list[dict]) -> str:
    """The whole page for one provider_bench.json document and its profile's history."""
    measured = [p for p in report["providers"] if p["status"] == "measured"]
    calibrated = any(p.get("calibrated_ratios") for p in measured)
    unit = "ratio to the calibration probe" if calibrated else "tok/s"

    def speed(p: dict, label: str) -> tuple[float, float | None]:
        """A measured provider's speed (or ratio) and its floor."""
        name = f"{label} / calibration" if calibrated else f"{label} tok/s"
        check = next((c for c in p["checks"] if c["name"] == name), None)
        value = p["calibrated_ratios"][label] if calibrated else p["speed"][f"{label}_tok_s"]
        return value, check and check["threshold"]

    title = f"{unit} (bars) vs floor (black ticks), {report['model_key']}"
    charts = [bar_chart(f"{kind} {title}", [(p["provider"], *speed(p, kind)) for p in measured]) for kind in KINDS]
    series: dict[str, list[tuple[str, float]]] = {}
    for entry in history:
        if entry["model"] != report["model_key"] or (calibrated and "calibration" not in entry):
            continue
        value = entry["calibration"]["decode_ratio"] if calibrated else entry["decode_tok_s"]
        series.setdefault(entry["provider"], []).append((entry["time"], value))
    floors = {}
    for p in measured:
        value, floor = speed(p, "decode")
        series.setdefault(p["provider"], []).append((report["time"], value))
        if floor is not None:
            floors[p["provider"]] = floor
    charts.append(
        history_chart(f"decode {unit} over time ({report['model_key']}, profile {report['profile']})", series, floors)
    )
    bundle = report["bundle"]
    verdict = "PASS" if report["passed"] else "FAIL"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>omnicoder-bench {escape(report["profile"])}: {verdict}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}tr.fail td{{background:#fdecea}}
.PASS{{color:{PASS}}}.FAIL{{color:{FAIL}}}</style></head><body>
<h1>Provider bench: <span class="{verdict}">{verdict}</span></h1>
<p>Bundle <code>{escape(bundle["path"])}</code>: {escape(report["model_key"])}, {bundle["quantized_layers"]} quantized
layers, attention op {escape(str(bundle["attention_op"]))}. Profile <b>{escape(report["profile"])}</b>
({escape(report["profile_description"])}). Host: {escape(report["host"]["machine"])}, {report["host"]["cpus"]} CPUs,
onnxruntime {escape(report["host"]["onnxruntime"])}; {escape(report["time"])}.</p>
{checks_table(report)}
{"".join(f"<p>{chart}</p>" for chart in charts if chart)}
<p>Speeds are medians after a warm-up ({escape(str(report["settings"]))}). Floors come from
<code>profiles/provider_thresholds.json</code>; "indicative" floors are placeholders not measured on the device.</p>
</body></html>
"""
