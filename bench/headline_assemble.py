"""Assemble the headline bench from the committed per-method benches of the current presets, without refitting.

    python bench/headline_assemble.py --from bench/results/shapes_world2/methods --out bench/results/headline/bench.json

``bash bench/shapes_world2_bench.sh`` benches each method in its own folder (one job per method, several at a time),
every folder keeping the same base rates. This script checks that the folders share one protocol and one base pass,
and writes their rows as one ``bench.json`` in the bench's row format, each row naming its ``source`` folder, in the
order of ``--methods`` and then of the concepts. A folder whose bench set a preset field (``--set``, e.g. ESD's
``train_method=noxattn`` in ``esd-u-lr5e-5/``) records it in its rows' ``overrides``.
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ("model", "seeds", "num_inference_steps", "guidance_scale")
ORDER = ("esd-x", "esd-u-lr5e-5", "uce", "kpop", "dumo", "sld", "rece", "mace", "advunlearn", "safree")
CONCEPTS = ("circle", "square", "hatched", "circle+square+triangle", "circle+square+triangle+star+cross+oval")
# Folders whose bench set preset fields with --set. ESD-u: ESD's shapes preset with train_method noxattn; at the
# preset's learning rate (5e-4, tuned for cross-attention) it collapses the model (esd-u/), so its row is at 5e-5.
OVERRIDES = {"esd-u-lr5e-5": {"train_method": "noxattn", "learning_rate": 5e-5}}


def read(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def assemble(folder, order=ORDER, concepts=CONCEPTS):
    """The headline report from ``folder``'s per-method bench folders."""
    folder = Path(folder)
    benches = [(name, folder / name / "bench.json") for name in order if (folder / name / "bench.json").is_file()]
    if not benches:
        raise SystemExit(f"error: no bench.json under {folder}/<method>/; run bash bench/shapes_world2_bench.sh first.")
    first = read(benches[0][1])
    protocol = {k: first[k] for k in PROTOCOL}
    rank = {c: i for i, c in enumerate(concepts)}
    rows = []
    for name, path in benches:
        report = read(path)
        shown = os.path.relpath(path.parent, ROOT)
        if any(report[k] != protocol[k] for k in PROTOCOL) or report.get("base_rows_sha256") != first.get("base_rows_sha256"):
            raise SystemExit(f"error: {shown} was made with another protocol or base pass than {benches[0][0]}/; "
                             "bench it again with bash bench/shapes_world2_bench.sh.")
        for row in sorted(report["rows"], key=lambda r: rank.get(r["concept"], len(rank))):
            extra = {"overrides": OVERRIDES[name]} if name in OVERRIDES else {}
            rows.append(dict(row, source=shown, **extra))
    return dict(protocol, base=first["base"], base_rows_sha256=first.get("base_rows_sha256"), attacks=[],
                assembled_by="python bench/headline_assemble.py", assembled_from=os.path.relpath(folder, ROOT), rows=rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", default="bench/results/shapes_world2/methods")
    parser.add_argument("--out", default="bench/results/headline/bench.json")
    args = parser.parse_args(argv)
    report = assemble(ROOT / args.source)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(f"{args.out}: {len(report['rows'])} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
