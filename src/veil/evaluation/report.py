"""One self-contained HTML page from evaluation folders and bench folders.

Per evaluation: an image grid (the same prompts and seeds as original / erased / unlocked), a
table of every metric per variant, and a bar chart of the headline numbers. Per bench
(``bench.json``): its table, a chart of target rates before and after, a heat map of each learned
TLMO table (DuMo's ``time_scale*.npy`` in the row's artifact folder) and each key-forging curve
(rows with ``forging_curve``). Images are embedded as
base64 and charts are inline SVG, so the file opens anywhere with nothing beside it. A small inline
script marks ``<body data-images-loaded="n/m">`` once the page has loaded, for headless checks.

Example:
    >>> write_report(["results/esd-circle", "bench/"], "report.html", screenshot="docs/report.png")
"""

import base64
import html
import io
import os
import shutil
import subprocess
import tempfile

import numpy as np

from .._io import atomic_file, read_json_object
from ..errors import VeilError

COLOURS = {"original": "#7f8c8d", "erased": "#c0392b", "unlocked": "#2471a3"}
BENCH_COLUMNS = ("method", "concept", "base_target_rate", "target_rate", "synonym_rate", "paraphrase_rate",
                 "short_rate", "implicit_rate", "heldout_implicit_rate", "nontarget_share", "other_kinds_share",
                 "style_shape_rate", "min_other_share", "target_rate_with_key", "target_rate_wrong_key",
                 "target_rate_random_key", "seconds", "artifact_mb")  # a column shows when some row has it
BENCH_BARS = (("base_target_rate", "#7f8c8d"), ("target_rate", "#c0392b"), ("paraphrase_rate", "#e67e22"), ("nontarget_share", "#27ae60"))
FORGING_COLOURS = {"forged key": "#c0392b", "real key": "#2471a3", "public": "#7f8c8d", "half recovery": "#e67e22"}
HEAT_STOPS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")  # viridis: low (dark) to high (light)
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.meta{color:#666;font-size:12px}
.grid td{text-align:center;vertical-align:top}.grid img{width:96px;height:96px;image-rendering:pixelated;display:block}
.grid td.p{text-align:left;max-width:320px;font-size:12px}.t{color:#c0392b;font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}figure{margin:0}
"""
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) { if (images[i].complete && images[i].naturalWidth > 0) ok++; }
  document.body.setAttribute("data-images-loaded", ok + "/" + images.length);
});
"""


def _e(value):
    return html.escape(str(value), quote=True)


def _fmt(value):
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _e(value)


def image_data_uri(path, size=192):
    """The image at ``path`` as a PNG data URI, shrunk to at most ``size`` pixels a side."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _chart_frame(width, height, title, left, y0, plot_w, plot_h, top):
    """The opening of a chart's SVG: the title and the y grid with five ticks from 0 to ``top``."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" role="img" aria-label="{_e(title)}">',
             f'<text x="{left}" y="14" font-size="13" font-weight="600">{_e(title)}</text>']
    for i in range(5):
        y = y0 + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{top * i / 4:.3g}</text>')
    return parts


def bar_chart(groups, series, colours, title="", width=760, height=200):
    """An inline SVG grouped bar chart: ``groups`` labels, ``series`` ``{name: [value per group]}``; ``height`` is the plot's."""
    values = [v for vs in series.values() for v in vs if isinstance(v, (int, float))]
    if not groups or not values:
        return ""
    top = 1.0 if all(0 <= v <= 1 for v in values) else max(max(values), 1e-9) * 1.1
    left, y0, plot_h = 48, 46, height  # y0: the plot's top, under the title and legend
    bottom = 16 + min(max(len(str(g)) for g in groups) * 3.6, 130)  # room for the slanted labels
    plot_w = width - left - 16
    slot = plot_w / len(groups)
    bar = max(2.0, min(28.0, (slot - 8) / max(len(series), 1)))
    total_h = y0 + plot_h + bottom
    parts = _chart_frame(width, total_h, title, left, y0, plot_w, plot_h, top)
    for s, name in enumerate(series):  # legend, under the title
        x = left + s * 130
        parts.append(f'<rect x="{x}" y="22" width="10" height="10" fill="{colours.get(name, "#888")}"/>'
                     f'<text x="{x + 14}" y="31" font-size="11">{_e(name)}</text>')
    for g, label in enumerate(groups):
        x0 = left + g * slot + (slot - bar * len(series)) / 2
        for s, (name, vs) in enumerate(series.items()):
            v = vs[g]
            if not isinstance(v, (int, float)):
                continue
            h = plot_h * max(min(v / top, 1.0), 0.0)
            parts.append(f'<rect x="{x0 + s * bar:.1f}" y="{y0 + plot_h - h:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                         f'fill="{colours.get(name, "#888")}"><title>{_e(name)} {_e(label)}: {v:.4g}</title></rect>')
        cx, ly = left + g * slot + slot / 2, y0 + plot_h + 12
        parts.append(f'<text x="{cx:.1f}" y="{ly}" font-size="10" text-anchor="end" transform="rotate(-30 {cx:.1f} {ly})">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _sequential(fraction):
    """The colour at ``fraction`` (clipped to [0, 1]) of the sequential scale ``HEAT_STOPS``."""
    position = min(max(float(fraction), 0.0), 1.0) * (len(HEAT_STOPS) - 1)
    i = min(int(position), len(HEAT_STOPS) - 2)
    low, high = (tuple(int(stop[k:k + 2], 16) for k in (1, 3, 5)) for stop in HEAT_STOPS[i:i + 2])
    return "#" + "".join(f"{round(a + (b - a) * (position - i)):02x}" for a, b in zip(low, high))


def heat_map(matrix, title="", row_label="row", column_label="column", cell=(26, 13)):
    """An inline SVG heat map of a 2-D ``matrix`` (row 0 on top) on a sequential scale, with a min/max legend.

    Every cell is a ``<rect class="cell">`` whose ``<title>`` tooltip gives its row, column and value;
    ``cell`` is a cell's (width, height) in pixels.
    """
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2:
        raise VeilError(f"A heat map needs a 2-D matrix, got one of shape {values.shape}.")
    finite = values[np.isfinite(values)]
    if not finite.size:
        return ""
    low, high = float(finite.min()), float(finite.max())
    rows, columns = values.shape
    cw, ch = cell
    left, y0 = 52, 26  # y0: the plot's top, under the title
    plot_w, plot_h = columns * cw, rows * ch
    width, height = max(left + plot_w + 16, 280), y0 + plot_h + 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{left}" y="14" font-size="13" font-weight="600">{_e(title)}</text>']
    for r in range(rows):
        for c in range(columns):
            v = values[r, c]
            fill = _sequential((v - low) / (high - low) if high > low else 0.5) if np.isfinite(v) else "#ccc"
            parts.append(f'<rect class="cell" x="{left + c * cw}" y="{y0 + r * ch}" width="{cw}" height="{ch}" fill="{fill}">'
                         f"<title>{_e(row_label)} = {r}, {_e(column_label)} {c}: {v:.4g}</title></rect>")
    every = max(1, round(12 / ch))  # row ticks at least 12 px apart
    for r in range(0, rows, every):
        parts.append(f'<text x="{left - 4}" y="{y0 + r * ch + ch / 2 + 3:.1f}" font-size="9" text-anchor="end">{r}</text>')
    every = max(1, round(14 / cw))
    for c in range(0, columns, every):
        parts.append(f'<text x="{left + c * cw + cw / 2:.1f}" y="{y0 + plot_h + 11}" font-size="9" text-anchor="middle">{c}</text>')
    mid_y = y0 + plot_h / 2
    parts.append(f'<text x="14" y="{mid_y:.1f}" font-size="11" text-anchor="middle" transform="rotate(-90 14 {mid_y:.1f})">{_e(row_label)}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{y0 + plot_h + 25}" font-size="11" text-anchor="middle">{_e(column_label)}</text>')
    legend_y, swatches = y0 + plot_h + 40, 10  # the scale: min, swatches from low to high, max
    parts.append(f'<text x="{left - 4}" y="{legend_y + 9}" font-size="10" text-anchor="end">{low:.3g}</text>')
    for i in range(swatches):
        parts.append(f'<rect x="{left + i * 14}" y="{legend_y}" width="14" height="10" fill="{_sequential(i / (swatches - 1))}"/>')
    parts.append(f'<text x="{left + swatches * 14 + 4}" y="{legend_y + 9}" font-size="10">{high:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(x, series, colours, title="", references=None, x_label="", y_label="", width=560, height=180):
    """An inline SVG line chart: ``series`` ``{name: [y per x]}`` over ``x``, and ``references`` ``{name: y}``
    as dashed horizontal lines; ``height`` is the plot's."""
    references = {name: v for name, v in (references or {}).items() if isinstance(v, (int, float))}
    values = [v for vs in series.values() for v in vs if isinstance(v, (int, float))] + list(references.values())
    if not x or not values:
        return ""
    top = 1.0 if all(0 <= v <= 1 for v in values) else max(max(values), 1e-9) * 1.1
    left, y0, plot_h = 48, 46, height
    plot_w = width - left - 116  # room for the reference lines' labels on the right
    x_low, x_span = min(x), (max(x) - min(x)) or 1

    def px(v):
        return left + plot_w * (v - x_low) / x_span

    def py(v):
        return y0 + plot_h - plot_h * max(min(v / top, 1.0), 0.0)

    parts = _chart_frame(width, y0 + plot_h + 40, title, left, y0, plot_w, plot_h, top)
    for s, name in enumerate([*series, *references]):  # legend, under the title: solid series, dashed references
        lx, dash = left + s * 120, ' stroke-dasharray="4 3"' if name in references else ""
        parts.append(f'<line x1="{lx}" x2="{lx + 16}" y1="27" y2="27" stroke="{colours.get(name, "#888")}" stroke-width="2"{dash}/>'
                     f'<text x="{lx + 20}" y="31" font-size="11">{_e(name)}</text>')
    for v in x:  # x axis ticks
        parts.append(f'<text x="{px(v):.1f}" y="{y0 + plot_h + 13}" font-size="10" text-anchor="middle">{_e(v)}</text>')
    for name, v in references.items():
        colour = colours.get(name, "#888")
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="{colour}" stroke-width="1.5" '
                     f'stroke-dasharray="4 3"><title>{_e(name)}: {v:.4g}</title></line>'
                     f'<text x="{left + plot_w + 4}" y="{py(v) + 4:.1f}" font-size="10" fill="{colour}">{_e(name)} {v:.3g}</text>')
    for name, vs in series.items():
        colour = colours.get(name, "#888")
        points = [(px(a), py(b), a, b) for a, b in zip(x, vs) if isinstance(b, (int, float))]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(f"{u:.1f},{w:.1f}" for u, w, _, _ in points)}"/>')
        parts.extend(f'<circle cx="{u:.1f}" cy="{w:.1f}" r="3" fill="{colour}"><title>{_e(name)} at {_e(a)}: {b:.4g}</title></circle>'
                     for u, w, a, b in points)
    if x_label:
        parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{y0 + plot_h + 30}" font-size="11" text-anchor="middle">{_e(x_label)}</text>')
    if y_label:
        mid_y = y0 + plot_h / 2
        parts.append(f'<text x="12" y="{mid_y:.1f}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {mid_y:.1f})">{_e(y_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _sample_ids(records, total=8):
    """Up to ``total`` ids in file order: half targets and half others where both exist, else whichever there are."""
    targets = [r["id"] for r in records if r.get("target")]
    others = [r["id"] for r in records if not r.get("target")]
    chosen = targets[: total // 2] + others[: total // 2]
    chosen += (targets[total // 2 :] + others[total // 2 :])[: total - len(chosen)]
    return sorted(chosen)


def _results_section(folder, results, rows_per_grid=8):
    from .generate import read_manifest
    from .harness import flatten

    config, task = results["config"], results["task"]
    variants = config["variants"]
    artifact = results.get("artifact") or {}
    title = f"{task['name']} (v{task['version']})" + (f" — {artifact.get('method')} on {', '.join(artifact.get('concepts', []))}" if artifact else "")
    out = [f"<section><h2>{_e(title)}</h2>",
           f'<p class="meta">model {_e(results["base_model"]["name"])} · {results["images"][variants[0]]} images per variant · '
           f'{config["num_inference_steps"]} steps · guidance {config["guidance_scale"]:g} · veil {_e(results["versions"].get("veil"))} · '
           f'git {_e((results.get("git_revision") or "?")[:12])} · {_e(folder)}</p>']
    # image grid: the same prompt and seed, one column per variant
    manifests = {v: {r["id"]: r for r in read_manifest(os.path.join(folder, results["generations"][v]))} for v in variants}
    targets = _target_ids(folder)
    first = [dict(r, target=r["id"] in targets) for r in manifests[variants[0]].values()]
    ids = _sample_ids(first, rows_per_grid)
    out.append('<div class="row"><table class="grid"><tr><th class="l">prompt, seed</th>' + "".join(f"<th>{_e(v)}</th>" for v in variants) + "</tr>")
    for i in ids:
        record = manifests[variants[0]][i]
        mark = ' <span class="t">target</span>' if i in targets else ""
        cells = "".join(f'<td><img alt="{_e(v)} {i}" src="{image_data_uri(manifests[v][i]["path"])}"></td>' if i in manifests[v] else "<td>–</td>"
                        for v in variants)
        out.append(f'<tr><td class="p">{_e(record["prompt"])} <span class="meta">seed {record["seed"]}</span>{mark}</td>{cells}</tr>')
    out.append("</table>")
    # metric table: one row per number, one column per variant
    better = results.get("higher_is_better", {})
    flat = {v: flatten(results["metrics"].get(v, {})) for v in variants}
    names = sorted({k for f in flat.values() for k in f})
    out.append('<table class="metrics"><tr><th class="l">metric</th>' + "".join(f"<th>{_e(v)}</th>" for v in variants) + "</tr>")
    for name in names:
        metric, _, key = name.partition(".")
        direction = better.get(metric, {}).get(key, better.get(metric, {}).get(key.split(".")[0]))
        arrow = "" if direction is None else (" ↑" if direction else " ↓")
        out.append(f'<tr><td class="l">{_e(name)}{arrow}</td>' + "".join(f"<td>{_fmt(flat[v].get(name))}</td>" for v in variants) + "</tr>")
    out.append("</table></div>")
    # bar charts: headline numbers, and per-concept rates where the metric has them
    headline = [f"{m}.{k}" for m, keys in results.get("headline", {}).items() for k in keys]
    groups = [h for h in headline if any(isinstance(_first_number(results["metrics"].get(v, {}), h), (int, float)) for v in variants)]
    series = {v: [_first_number(results["metrics"].get(v, {}), h) for h in groups] for v in variants}
    out.append(bar_chart(groups, series, COLOURS, title=f"{task['name']}: headline metrics"))
    rates = {v: (results["metrics"].get(v, {}).get("concept_rate") or {}).get("rates") or {} for v in variants}
    concepts = sorted({c for r in rates.values() for c in r})
    if concepts:
        out.append(bar_chart(concepts, {v: [rates[v].get(c) for c in concepts] for v in variants}, COLOURS,
                             title=f"{task['name']}: concept rate per concept", width=max(760, 26 * len(concepts) * len(variants))))
    out.append("</section>")
    return "\n".join(out)


def _target_ids(folder):
    """The ids of the rows marked as targets in the evaluation's images.csv."""
    import csv

    path = os.path.join(folder, "images.csv")
    if not os.path.isfile(path):
        return set()
    with open(path, newline="", encoding="utf-8") as handle:
        return {int(row["id"]) for row in csv.DictReader(handle) if row.get("target") == "True"}


def _first_number(metrics, dotted):
    value = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    while isinstance(value, dict) and value:  # e.g. nudenet totals per threshold: the first threshold
        value = next(iter(value.values()))
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _bench_section(folder, bench):
    rows = bench.get("rows", [])
    columns = [c for c in BENCH_COLUMNS if any(c in r for r in rows)]
    out = [f"<section><h2>bench: {_e(bench.get('model', '?'))}</h2>",
           f'<p class="meta">seeds {_e(bench.get("seeds"))} · {_e(folder)}</p>',
           '<table class="bench"><tr>' + "".join(f'<th class="{"l" if c in ("method", "concept") else ""}">{_e(c)}</th>' for c in columns) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="{"l" if c in ("method", "concept") else ""}">{_fmt(row.get(c))}</td>' for c in columns) + "</tr>")
    out.append("</table>")
    groups = [f"{r.get('method')}·{r.get('concept')}" for r in rows]
    series = {name: [r.get(name) for r in rows] for name, _ in BENCH_BARS if any(r.get(name) is not None for r in rows)}
    out.append(bar_chart(groups, series, dict(BENCH_BARS), title="bench: target rate before and after, paraphrases, non-target share"))
    out.append(_attack_table(rows))
    figures = [f for row in rows for f in _time_scale_maps(folder, row)] + [_forging_figure(r) for r in rows if r.get("forging_curve")]
    if figures:
        out.append('<div class="row">' + "".join(figures) + "</div>")
    out.append("</section>")
    return "\n".join(out)


def _attack_table(rows):
    """Attack success (share of images labelled as the concept) before and after each attack, as a table and bars."""
    attacked = [r for r in rows if r.get("attacks", {}).get("attacks")]
    if not attacked:
        return ""
    names = list(dict.fromkeys(n for r in attacked for n in r["attacks"]["attacks"]))
    success = {n: [r["attacks"]["attacks"].get(n, {}).get("attack_success_rate") for r in attacked] for n in names}
    out = ['<h3>attack success</h3><table class="bench"><tr><th class="l">method</th><th class="l">concept</th><th>before</th>'
           + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"]
    for i, r in enumerate(attacked):
        out.append(f'<tr><td class="l">{_e(r.get("method"))}</td><td class="l">{_e(r.get("concept"))}</td>'
                   f'<td>{_fmt(r["attacks"].get("before"))}</td>' + "".join(f"<td>{_fmt(success[n][i])}</td>" for n in names) + "</tr>")
    out.append("</table>")
    palette = ("#7f8c8d", "#c0392b", "#e67e22", "#2471a3", "#27ae60", "#8e44ad")
    series = {"before": [r["attacks"].get("before") for r in attacked], **success}
    out.append(bar_chart([f"{r.get('method')}·{r.get('concept')}" for r in attacked], series,
                         {name: palette[i % len(palette)] for i, name in enumerate(series)},
                         title="attack success: concept rate before and after each attack"))
    return "\n".join(out)


def _time_scale_maps(folder, row):
    """Heat maps of the learned TLMO tables (``time_scale*.npy``: timestep bucket × skip slot) in the row's artifact folder."""
    import glob

    if not row.get("artifact"):
        return []
    paths = sorted(glob.glob(os.path.join(glob.escape(os.path.join(folder, row["artifact"])), "time_scale*.npy")))
    return [heat_map(np.load(path, allow_pickle=False), f"{row.get('method')}·{row.get('concept')}: {os.path.basename(path)}",
                     row_label="t // 50", column_label="slot") for path in paths]


def _forging_figure(row):
    """The row's key-forging curve: the forged key's concept rate against steps, next to the real key's and the public rate."""
    curve = row["forging_curve"]
    references = {"real key": curve.get("real_key_rate"), "public": curve.get("public_rate"), "half recovery": curve.get("half_recovery_rate")}
    chart = line_chart(curve.get("steps") or [], {"forged key": curve.get("forged_rate") or []}, FORGING_COLOURS,
                       title=f"{row.get('method')}·{row.get('concept')}: key forging", references=references,
                       x_label="forging steps", y_label="concept rate")
    half, steps = curve.get("half_recovery_rate"), curve.get("steps_to_half")
    if half is None:
        caption = "half recovery: no real-key rate to compare with"
    elif steps is None:
        caption = f"half recovery (concept rate ≥ {half:.3g}): not reached"
    else:
        caption = f"half recovery (concept rate ≥ {half:.3g}) reached after {steps} forging steps"
    return f'<figure>{chart}<figcaption class="meta">{_e(caption)}</figcaption></figure>'


def build_report(paths, title="veil evaluation report"):
    """The HTML text for evaluation folders (with ``results.json``) and bench folders (with ``bench.json``)."""
    from .harness import load_results

    sections = []
    for path in paths:
        if os.path.isfile(os.path.join(path, "results.json")):
            file, section, data = os.path.join(path, "results.json"), _results_section, load_results(path)
        elif os.path.isfile(os.path.join(path, "bench.json")):
            file, section, data = os.path.join(path, "bench.json"), _bench_section, read_json_object(os.path.join(path, "bench.json"), "veil bench")
        else:
            raise VeilError(f"{path!r} holds neither results.json nor bench.json; pass folders written by veil eval or veil bench.")
        try:
            sections.append(section(path, data))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:  # a file edited or written by something else
            raise VeilError(f"{file!r} is not laid out as veil writes it ({error.__class__.__name__}: {error}); write it again with veil.") from None
    if not sections:
        raise VeilError("Nothing to report; pass at least one folder written by veil eval or veil bench.")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head>\n<body><h1>{_e(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


def write_report(paths, out, title="veil evaluation report", screenshot=None, overwrite=True):
    """Write the report to ``out`` (atomically); optionally a PNG screenshot of it by headless Chromium."""
    if screenshot:
        find_chromium()  # refused before anything is written
    text = build_report(paths, title)
    with atomic_file(out, overwrite=overwrite, mode="w") as handle:
        handle.write(text)
    if screenshot:
        take_screenshot(out, screenshot)
    return out


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise VeilError("Headless Chromium is not installed; install it (Debian: apt-get install chromium) to take screenshots.")


def _chromium(html_path, *flags, timeout=120):
    # Chromium's helper processes may still be writing to the profile when it exits: never fail on its removal.
    with tempfile.TemporaryDirectory(prefix="veil-chromium-", ignore_cleanup_errors=True) as profile:
        command = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                   f"--user-data-dir={profile}", "--virtual-time-budget=10000", *flags,
                   "file://" + os.path.abspath(html_path)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise VeilError(f"Chromium failed on {html_path!r} (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:] or ''}.")
    return done.stdout


def render_dom(html_path):
    """The page's DOM after load, as headless Chromium sees it (scripts run)."""
    return _chromium(html_path, "--dump-dom")


def take_screenshot(html_path, png_path, width=1280, height=2400):
    """A PNG of the page's first ``width`` × ``height`` pixels."""
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    # Without waiting for every compositor stage, large pages come back with unpainted tiles.
    _chromium(html_path, "--run-all-compositor-stages-before-draw", f"--screenshot={os.path.abspath(png_path)}",
              f"--window-size={width},{height}")
    if not os.path.isfile(png_path):
        raise VeilError(f"Chromium wrote no screenshot to {png_path!r}.")
    return png_path
