"""Which canonical images of a concept an artifact lost, and what the classifier saw in them instead.

    python bench/kpop_lost.py bench/results/kpop/ablation-anchor/holed-400-steps-lr-4e-3-seed-1/artifacts/kpop-square --concept dotted \\
        --out bench/results/kpop/ablation-anchor/holed-400-steps-lr-4e-3-seed-1/lost_dotted.json

Draws the bench's canonical prompts that name the concept (seeds 0 and 1, DDIM 20, guidance 3) with the original
model and with the artifact attached, and lists each image the original drew right and the artifact did not.
"""
import collections

from _common import ShapesProbe, shapes_parser
from veil._io import write_json
from veil.artifact import load_artifact
from veil.evaluation.concept_rate import KINDS, evaluate_prompts
from veil.shapes import world_data
from veil.shapes.classifier import classify

CONCEPT_KIND = world_data().CONCEPT_KIND  # the bundled model's shapes world


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("artifact")
    parser.set_defaults(seeds="0,1")
    args = parser.parse_args()
    probe = ShapesProbe(args)
    concept, kind, rows = args.concept, CONCEPT_KIND[args.concept], probe.target_rows
    settings = dict(num_inference_steps=args.num_inference_steps, guidance_scale=3.0)
    base = evaluate_prompts(probe.pipe, rows, classify, **settings)["labels"]
    artifact = load_artifact(args.artifact)
    artifact.attach(probe.pipe)
    try:
        after = evaluate_prompts(probe.pipe, rows, classify, **settings)["labels"]
    finally:
        artifact.detach(probe.pipe)
    lost, kept = [], []
    for i, row in enumerate(rows):
        if base[kind][i] != concept:
            continue  # the original missed it too
        item = {"prompt": row["prompt"], "seed": row["seed"]}
        if after[kind][i] == concept:
            kept.append(item)
        else:
            lost.append({**item, "drawn": {k: after[k][i] for k in KINDS}})
    for item in lost:
        print(f"{item['prompt']!r} seed {item['seed']}: drawn {item['drawn']}")
    for item in kept:
        print(f"kept: {item['prompt']!r} seed {item['seed']}")
    print(f"{concept}: {len(lost)} of {len(rows)} images lost; drawn as "
          f"{dict(collections.Counter(item['drawn'][kind] for item in lost))}")
    write_json(args.out, probe.record(artifact=args.artifact, images=len(rows), lost=lost, kept=kept))


if __name__ == "__main__":
    main()
