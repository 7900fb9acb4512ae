"""RECE and SAFREE rows on the shapes world with ``veil bench``'s protocol, against the committed headline bench's base.

Each method is fitted with its shapes preset on one concept (or several at once: ``--concepts circle+square``)
and measured as ``veil bench`` measures a row: every concept's rate on the canonical prompts (the other concepts
as a share of their base), the target's rate on its training synonyms and on its held-out paraphrases. The base
model's rates are read from ``--base`` (a ``veil bench`` report made with the same model, seeds and sampling)
instead of being generated again, which halves the run on a CPU. One JSON file per row, written as it finishes.
"""

import argparse
import json
import os
import time

import veil
from veil._io import write_json
from veil.bench import _evaluate, _mean, _share
from veil.evaluation.shapes_tasks import rows_naming, task_rows
from veil.methods.presets import preset_for
from veil.shapes import world_data
from veil.shapes.classifier import classify

CONCEPT_KIND = world_data().CONCEPT_KIND  # the bundled model's shapes world


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", default="rece,safree")
    parser.add_argument("--concepts", default="circle,square", help="Comma-separated rows; 'a+b' fits one artifact on both.")
    parser.add_argument("--base", default="bench/results/shapes/world1-headline/bench.json")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE")
    parser.add_argument("--out", required=True, help="Folder of the rows' JSON files.")
    parser.add_argument("--artifacts", help="Folder to save each row's artifact in (for veil attack); none: not saved.")
    args = parser.parse_args()

    from veil.cli.common import parse_dotted_settings

    overrides = parse_dotted_settings(args.set, "--set", lambda name: veil.get_method(name).name)
    with open(args.base) as handle:
        report = json.load(handle)
    seeds, steps, scale = report["seeds"], report["num_inference_steps"], report["guidance_scale"]
    base = report["base"]
    settings = {"num_inference_steps": steps, "guidance_scale": scale, "progress": False}
    pipe = veil.load_pipeline(report["model"])
    rows_by_set = {"canonical": task_rows("shapes_concepts", seeds), "synonyms": task_rows("shapes_synonyms", seeds),
                   "paraphrase": task_rows("shapes_paraphrase")}
    os.makedirs(args.out, exist_ok=True)
    for method_name in args.methods.split(","):
        cls = veil.get_method(method_name)
        for group in args.concepts.split(","):
            concepts = group.split("+")
            config = preset_for(cls, report["model"], concepts)
            config.update(overrides.get(cls.name, {}))
            method = cls(cls.config_class.from_dict({**config, "concepts": concepts}))
            start, cpu = time.perf_counter(), time.process_time()
            cost = veil.fit(method, pipe, progress=False)
            seconds, cpu = round(time.perf_counter() - start, 3), round(time.process_time() - cpu, 3)
            load = [round(x, 2) for x in os.getloadavg()]  # the shared machine's load over the last 1, 5 and 15 minutes
            if args.artifacts:
                veil.Artifact.from_method(method, pipe, cost).save(
                    os.path.join(args.artifacts, f"{cls.name}-{'+'.join(concepts)}"), overwrite=True)
            canonical = _evaluate(pipe, rows_by_set["canonical"], classify, settings)
            row = {"method": cls.name, "concepts": concepts, "seconds": seconds, "cpu_seconds": cpu, "load_average": load, "fit": {k: v for k, v in cost.items() if k != "losses"},
                   "protocol": {"model": report["model"], "seeds": seeds, "num_inference_steps": steps, "guidance_scale": scale,
                                "base": args.base},
                   "config": method.config.to_dict(), "targets": {}}
            for concept in concepts:
                synonyms = _evaluate(pipe, rows_naming(rows_by_set["synonyms"], concept), classify, settings)
                paraphrase = _evaluate(pipe, rows_naming(rows_by_set["paraphrase"], concept), classify, settings)
                row["targets"][concept] = {
                    "base_target_rate": base["canonical"]["rates"].get(concept),
                    "target_rate": canonical["rates"].get(concept),
                    "base_synonym_rate": base["synonyms"]["rates"].get(concept),
                    "synonym_rate": synonyms["rates"].get(concept),
                    "base_paraphrase_rate": base["paraphrase"]["rates"].get(concept),
                    "paraphrase_rate": paraphrase["rates"].get(concept),
                }
            others = [c for c in CONCEPT_KIND if c not in concepts]
            shares = _share(canonical, base["canonical"], others)
            row["nontarget_mean_share"] = _mean(list(shares.values()))
            row["nontarget_min_share"] = min(shares.values())
            row["nontarget_shares"] = {c: round(v, 4) for c, v in shares.items()}
            method.detach(pipe)
            write_json(os.path.join(args.out, f"{cls.name}-{'+'.join(concepts)}.json"), row)
            print(json.dumps({k: row[k] for k in ("method", "concepts", "seconds", "targets", "nontarget_min_share")}), flush=True)


if __name__ == "__main__":
    main()
