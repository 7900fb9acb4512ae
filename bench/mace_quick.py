"""MACE (or another method, --method) on the shapes world with its shapes preset, a bounded probe of the bench's bars
(one seed, canonical prompts and training synonyms; the full `veil bench` adds the paraphrase and short sets and a
second seed).

For each concept: the fit's seconds and stage costs, the target's rate on its canonical prompts and training
synonyms, and every other concept's canonical rate as a share of the base model's; writes one JSON.

    python bench/mace_quick.py --concepts circle,square --out bench/results/mace/canonical-and-synonyms/rates.json
"""

import json
import os
import platform
import time

import torch

import veil
from veil.evaluation.shapes_tasks import rows_naming, task_rows
from veil.methods.presets import preset_for

from _common import ShapesProbe, parse_set, shapes_parser


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("--concepts", default="circle,square")
    parser.add_argument("--method", default="mace", help="Registered method name.")
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE on top of the shapes preset; repeatable.")
    args = parser.parse_args()
    concepts = [c.strip() for c in args.concepts.split(",") if c.strip()]
    args.concept = concepts[0]
    probe = ShapesProbe(args)
    all_synonyms = task_rows("shapes_synonyms", probe.seeds)
    base = probe.rates(probe.canonical)
    cls = veil.get_method(args.method)
    rows = []
    for concept in concepts:
        settings = {**preset_for(cls, "shapes", [concept]), **parse_set(args.set)}
        method = cls(concepts=[concept], **settings)
        start = time.perf_counter()
        cost = veil.fit(method, probe.pipe, progress=False)
        seconds = time.perf_counter() - start
        after = probe.rates(probe.canonical)
        synonyms = probe.rates(rows_naming(all_synonyms, concept))
        method.detach(probe.pipe)
        others = {c: round(after[c] / base[c], 4) for c in base if c != concept and base[c]}
        rows.append({
            "concept": concept, "fit_seconds": round(seconds, 1), "cost": cost,
            "base_target_rate": base.get(concept), "target_rate": after.get(concept), "synonym_rate": synonyms.get(concept),
            "other_concepts_share_of_base": others, "min_other_share": min(others.values()),
            "settings": {k: (f"{len(v)} prompts" if isinstance(v, list) and len(v) > 20 else v)
                         for k, v in method.config.to_dict().items() if k != "synonyms"},
        })
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("other_concepts_share_of_base", "settings")}), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    result = {"method": cls.name, "model": args.model, "seeds": list(probe.seeds), "num_inference_steps": args.num_inference_steps,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
              "base_canonical_rates": base, "rows": rows}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
