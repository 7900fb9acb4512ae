"""Shapes presets retrained and measured on the bench's prompt sets, against the base rates of a finished bench.

    OMP_NUM_THREADS=1 python bench/preset_rows.py --methods esd --concepts circle,square --seeds 0 \\
        --base bench/results/attacks/shapes/bench.json --out bench/results/shapes/preset-rows/esd.json

Each method × concept is fitted from the model's preset (``--set METHOD=FIELD=VALUE`` changes it) and drawn on the
rows ``veil bench`` draws after fitting: every canonical prompt of ``--seeds`` and the concept's synonym, paraphrase
and short prompts, plus the keyed rates. What it skips is the bench's base pass (1,044 images at one seed): the base
rates come from ``--base``, a bench of the same model, sampling and prompt sets (its paraphrase and short rows are the
same; its canonical and synonym rows may hold more seeds). The JSON is rewritten after each row, with the rows of
``veil bench``'s bench.json.
"""

import argparse
import json
import os
import time

import veil
from veil._io import write_json
from veil.bench import _evaluate, _key_rows, _mean, _share
from veil.evaluation.shapes_tasks import rows_naming, task_rows
from veil.methods.presets import preset_for
from veil.shapes import world_data
from veil.shapes.classifier import classify

from _common import parse_named_settings

CONCEPT_KIND = world_data().CONCEPT_KIND  # the bundled model's shapes world


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", required=True)
    parser.add_argument("--concepts", default="circle,square")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--base", required=True, help="bench.json of a finished bench: its base rates.")
    parser.add_argument("--set", action="append", default=[], help="METHOD=FIELD=VALUE[,FIELD=VALUE]")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    base = json.loads(open(args.base).read())["base"]
    overrides = dict(parse_named_settings(item) for item in args.set)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    settings = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale}
    pipe = veil.load_pipeline("shapes")
    sets = {"canonical": task_rows("shapes_concepts", seeds), "synonyms": task_rows("shapes_synonyms", seeds),
            "paraphrase": task_rows("shapes_paraphrase"), "short": task_rows("shapes_short", seeds)}
    record = {"model": "shapes", "seeds": list(seeds), **settings, "base_from": args.base, "rows": []}
    if os.path.isfile(args.out):
        record["rows"] = json.loads(open(args.out).read())["rows"]
    done = {(r["method"], r["concept"]) for r in record["rows"]}
    for name in args.methods.split(","):
        cls = veil.get_method(name)
        for concept in args.concepts.split(","):
            if (name, concept) in done:
                continue
            config = preset_for(cls, "shapes", [concept]) | overrides.get(name, {})
            method = cls(cls.config_class.from_dict({**config, "concepts": [concept]}))
            start = time.perf_counter()
            cost = veil.fit(method, pipe, progress=False)
            seconds = cost.get("seconds") or round(time.perf_counter() - start, 3)
            after = {key: _evaluate(pipe, rows if key == "canonical" else rows_naming(rows, concept), classify, settings)
                     for key, rows in sets.items()}
            others = [c for c in CONCEPT_KIND if c != concept]
            same_kind = [c for c in others if CONCEPT_KIND[c] == CONCEPT_KIND[concept]]
            shares = _share(after["canonical"], base["canonical"], others)
            row = {"method": name, "concept": concept,
                   **{f"base_{key}_rate": base.get(key, {}).get("rates", {}).get(concept) for key in sets},
                   **{f"{key}_rate": after[key]["rates"].get(concept) for key in sets},
                   "nontarget_min_share": min((shares[c] for c in same_kind if c in shares), default=None),
                   "other_kinds_min_share": min((shares[c] for c in others if c not in same_kind and c in shares), default=None),
                   "lowest_other": min(shares, key=shares.get) if shares else None,
                   "other_mean_share": _mean(list(shares.values())),
                   "nontarget_shares": {c: round(v, 4) for c, v in shares.items()},
                   "seconds": seconds, "config": method.config.to_dict()}
            row.update(_key_rows(method, pipe, concept, rows_naming(sets["canonical"], concept), classify, settings))
            method.detach(pipe)
            record["rows"].append(row)
            write_json(args.out, record)
            print({k: v for k, v in row.items() if k not in ("config", "nontarget_shares")}, flush=True)


if __name__ == "__main__":
    main()
