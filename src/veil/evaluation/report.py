"""One self-contained HTML page from evaluation folders and bench folders.

Per evaluation: an image grid (the same prompts and seeds as original / erased / unlocked), a
table of every metric per variant, and a bar chart of the headline numbers. Per bench
(``bench.json``): its table and a chart of target rates before and after. Images are embedded as
base64 and charts are inline SVG, so the file opens anywhere with nothing beside it. A small inline
script marks ``<body data-images-loaded="n/m">`` once the page has loaded, for headless checks.

Example:
    >>> write_report(["results/esd-circle", "bench/"], "report.html", screenshot="docs/report.png")
"""

import base64
import html
import io
import json
import os
import shutil
import subprocess
import tempfile

from .._io import atomic_file
from ..errors import VeilError

COLOURS = {"original": "#7f8c8d", "erased": "#c0392b", "unlocked": "#2471a3"}
BENCH_COLUMNS = ("method", "concept", "base_target_rate", "target_rate", "synonym_rate", "paraphrase_rate",
                 "nontarget_share", "other_kinds_share", "target_rate_right_key", "seconds", "artifact_mb")
BENCH_BARS = (("base_target_rate", "#7f8c8d"), ("target_rate", "#c0392b"), ("paraphrase_rate", "#e67e22"), ("nontarget_share", "#27ae60"))
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.meta{color:#666;font-size:12px}
.grid td{text-align:center;vertical-align:top}.grid img{width:96px;height:96px;image-rendering:pixelated;display:block}
.grid td.p{text-align:left;max-width:320px;font-size:12px}.t{color:#c0392b;font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
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
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_h:.0f}" role="img" aria-label="{_e(title)}">',
             f'<text x="{left}" y="14" font-size="13" font-weight="600">{_e(title)}</text>']
    for s, name in enumerate(series):  # legend, under the title
        x = left + s * 130
        parts.append(f'<rect x="{x}" y="22" width="10" height="10" fill="{colours.get(name, "#888")}"/>'
                     f'<text x="{x + 14}" y="31" font-size="11">{_e(name)}</text>')
    for i in range(5):  # y axis ticks
        y = y0 + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{top * i / 4:.3g}</text>')
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
    out.append("</section>")
    return "\n".join(out)


def build_report(paths, title="veil evaluation report"):
    """The HTML text for evaluation folders (with ``results.json``) and bench folders (with ``bench.json``)."""
    sections = []
    for path in paths:
        if os.path.isfile(os.path.join(path, "results.json")):
            with open(os.path.join(path, "results.json")) as handle:
                sections.append(_results_section(path, json.load(handle)))
        elif os.path.isfile(os.path.join(path, "bench.json")):
            with open(os.path.join(path, "bench.json")) as handle:
                sections.append(_bench_section(path, json.load(handle)))
        else:
            raise VeilError(f"{path!r} holds neither results.json nor bench.json; pass folders written by veil eval or veil bench.")
    if not sections:
        raise VeilError("Nothing to report; pass at least one folder written by veil eval or veil bench.")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head>\n<body><h1>{_e(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


def write_report(paths, out, title="veil evaluation report", screenshot=None):
    """Write the report to ``out`` (atomically); optionally a PNG screenshot of it by headless Chromium."""
    text = build_report(paths, title)
    with atomic_file(out, mode="w") as handle:
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
    with tempfile.TemporaryDirectory(prefix="veil-chromium-") as profile:
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
