"""Assemble the headline bench from committed runs of the current presets, without refitting anything.

    python bench/headline_assemble.py --out bench/results/headline/bench.json

``make bench`` rebuilds bench/results/headline from scratch (over an hour on one CPU thread); this script
is the stand-in when that is not possible: it takes, per method, the committed rows that were made with
the method's current shapes preset and the bench's protocol (seeds 0 and 1, DDIM 20, guidance 3), and
writes them as one ``bench.json`` whose rows each name their ``source``:

- ESD, UCE, SLD: bench/results/attacks/shapes (their presets have not changed since that bench);
- KPOP: bench/results/kpop/preset/seed-1;
- DuMo: the preset's trained artifacts of bench/results/attacks/shapes, measured with the preset's skip rule
  in bench/results/dumo/gate-thresholds/either-{concept}.json (no short prompts there).
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "bench/results"
ROWS = {"esd": "attacks/shapes", "uce": "attacks/shapes", "sld": "attacks/shapes", "kpop": "kpop/preset/seed-1"}
DUMO_TRAINED = "attacks/shapes"
DUMO_MEASURED = "dumo/gate-thresholds/either-{concept}.json"


def read(relative):
    with open(ROOT / RESULTS / relative, encoding="utf-8") as handle:
        return json.load(handle)


PROTOCOL = ("model", "seeds", "num_inference_steps", "guidance_scale")


def bench_row(folder, method, concept):
    bench = read(f"{folder}/bench.json")
    reference = read(f"{ROWS['esd']}/bench.json")
    if any(bench[k] != reference[k] for k in PROTOCOL):
        raise SystemExit(f"error: {RESULTS}/{folder}/bench.json was made with another protocol; rebuild the headline with make bench.")
    rows = [r for r in bench["rows"] if r["method"] == method and r["concept"] == concept]
    if not rows:
        raise SystemExit(f"error: {RESULTS}/{folder}/bench.json has no {method} row for {concept}.")
    row = {k: v for k, v in rows[0].items() if k not in ("attacks", "artifact")}
    return dict(row, source=f"{RESULTS}/{folder}")


def dumo_row(concept):
    """DuMo's row: the bench row of its trained artifact, with the rates measured under the preset's skip rule."""
    row = bench_row(DUMO_TRAINED, "dumo", concept)
    measured_path = DUMO_MEASURED.format(concept=concept)
    measured = read(measured_path)
    gate = measured["gates"]["either"]
    base = measured["base"]
    shares = {c: (gate["canonical"][c] / base["canonical"][c] if base["canonical"][c] else None)
              for c in gate["canonical"] if c != concept}
    row.update(target_rate=gate["canonical"][concept], synonym_rate=gate["synonyms"], paraphrase_rate=gate["paraphrases"],
               base_target_rate=base["canonical"][concept], base_synonym_rate=base["synonyms"],
               base_paraphrase_rate=base["paraphrases"], nontarget_shares=shares,
               nontarget_min_share=min(v for v in shares.values() if v is not None), short_rate=None, base_short_rate=None,
               config=dict(row["config"], **gate["settings"]),
               source=f"{RESULTS}/{DUMO_TRAINED}, measured with the preset's skip rule in "
                      f"{RESULTS}/{DUMO_MEASURED.format(concept='*')}")
    for key in ("nontarget_share", "other_kinds_share"):
        row.pop(key, None)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=f"{RESULTS}/headline/bench.json")
    parser.add_argument("--concepts", default="circle,square")
    args = parser.parse_args(argv)
    template = read(f"{ROWS['esd']}/bench.json")
    rows = []
    for method in ("esd", "uce", "sld", "kpop", "dumo"):
        for concept in args.concepts.split(","):
            rows.append(dumo_row(concept) if method == "dumo" else bench_row(ROWS[method], method, concept))
    report = {k: template[k] for k in PROTOCOL + ("base",)}
    report.update(attacks=[], assembled_by="python bench/headline_assemble.py", rows=rows)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(f"{args.out}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
