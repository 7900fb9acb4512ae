"""Assemble the headline bench from committed rows of the current presets, without refitting anything.

    python bench/headline_assemble.py --out bench/results/headline/bench.json

``make bench`` rebuilds bench/results/headline from scratch (over an hour on one CPU thread). This script is the
stand-in when that is not possible: it takes each method's rows from bench/results/shapes/preset-rows, written by
``bench/preset_rows.py`` (every preset fitted again and drawn on the bench's after-fit prompt sets at seed 0, with the
base rates of bench/results/attacks/shapes), and writes them as one ``bench.json`` in the bench's row format, each row
naming its ``source``.
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "bench/results"
ROWS = {"esd": "shapes/preset-rows/esd.json", "uce": "shapes/preset-rows/uce.json",
        "sld": "shapes/preset-rows/sld.json", "kpop": "shapes/preset-rows/kpop.json",
        "dumo": "shapes/preset-rows/dumo.json", "rece": "shapes/preset-rows/rece.json",
        "safree": "shapes/preset-rows/safree.json", "mace": "shapes/preset-rows/mace.json",
        "advunlearn": "shapes/preset-rows/advunlearn.json"}
BASE = "attacks/shapes/bench.json"
PROTOCOL = ("model", "seeds", "num_inference_steps", "guidance_scale")
# preset_rows.py's field names -> the bench's
RENAMED = {"canonical_rate": "target_rate", "base_canonical_rate": "base_target_rate",
           "synonyms_rate": "synonym_rate", "base_synonyms_rate": "base_synonym_rate"}


def read(relative):
    with open(ROOT / RESULTS / relative, encoding="utf-8") as handle:
        return json.load(handle)


def row_of(relative, method, concept, protocol):
    record = read(relative)
    if any(record[k] != protocol[k] for k in PROTOCOL):
        raise SystemExit(f"error: {RESULTS}/{relative} was made with another protocol than the other rows; "
                         "rebuild the headline with make bench.")
    rows = [r for r in record["rows"] if r["method"] == method and r["concept"] == concept]
    if not rows:
        raise SystemExit(f"error: {RESULTS}/{relative} has no {method} row for {concept}.")
    row = {RENAMED.get(k, k): v for k, v in rows[0].items()}
    return dict(row, source=f"{RESULTS}/{os.path.dirname(relative)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=f"{RESULTS}/headline/bench.json")
    parser.add_argument("--concepts", default="circle,square")
    args = parser.parse_args(argv)
    first = read(ROWS["esd"])
    protocol = {k: first[k] for k in PROTOCOL}
    rows = [row_of(ROWS[method], method, concept, protocol)
            for method in ROWS for concept in args.concepts.split(",")]
    report = dict(protocol, base=read(BASE)["base"], attacks=[], assembled_by="python bench/headline_assemble.py",
                  rows=rows)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(f"{args.out}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
