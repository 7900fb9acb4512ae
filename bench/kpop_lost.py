"""Which canonical images of a concept an artifact lost, and what the classifier saw in them instead.

    python bench/kpop_lost.py bench/results/kpop_preset_s9/KL1/artifacts/kpop-square dotted [--out lost.json]

Draws the bench's canonical prompts that name the concept (seeds 0 and 1, DDIM 20, guidance 3) with the original
model and with the artifact attached, and lists each image the original drew right and the artifact did not.
"""
import argparse
import collections
import json

from veil._io import write_json
from veil.artifact import load_artifact
from veil.evaluation.concept_rate import KINDS, evaluate_prompts
from veil.evaluation.shapes_tasks import rows_naming, task_rows
from veil.models import load_pipeline
from veil.shapes.classifier import classify


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("concept")
    parser.add_argument("--out", default=None, help="JSON file for the list (default: print only)")
    args = parser.parse_args()
    pipe = load_pipeline("shapes")
    rows = rows_naming(task_rows("shapes_concepts", (0, 1)), args.concept)
    settings = dict(num_inference_steps=20, guidance_scale=3.0)
    base = evaluate_prompts(pipe, rows, classify, **settings)
    artifact = load_artifact(args.artifact)
    artifact.attach(pipe)
    after = evaluate_prompts(pipe, rows, classify, **settings)
    artifact.detach(pipe)
    lost, kept = [], []
    for i, row in enumerate(rows):
        kind = next(k for k in KINDS if row.get(k) == args.concept)
        if base["labels"][kind][i] == args.concept and after["labels"][kind][i] != args.concept:
            lost.append({"prompt": row["prompt"], "seed": row["seed"],
                         "drawn": {k: after["labels"][k][i] for k in KINDS}})
        elif base["labels"][kind][i] == args.concept:
            kept.append({"prompt": row["prompt"], "seed": row["seed"]})
    for item in lost:
        print(f"{item['prompt']!r} seed {item['seed']}: drawn {item['drawn']}")
    for item in kept:
        print(f"kept: {item['prompt']!r} seed {item['seed']}")
    kind = next(k for k in KINDS if rows[0].get(k) == args.concept)
    print(f"{args.concept}: {len(lost)} of {len(rows)} images lost; drawn as "
          f"{dict(collections.Counter(item['drawn'][kind] for item in lost))}")
    if args.out:
        write_json(args.out, {"artifact": args.artifact, "concept": args.concept, "images": len(rows), "lost": lost, "kept": kept})


if __name__ == "__main__":
    main()
