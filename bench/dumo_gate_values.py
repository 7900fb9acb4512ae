"""Where DuMo's gate opens: the gate of every held-out paraphrase of the concept and of every canonical
caption without it, and how many of each open at a range of thresholds. Text encoder only (no sampling).

    python bench/dumo_gate_values.py --artifact bench/results/attacks/shapes/artifacts/dumo-circle --concept circle \\
        --out bench/results/dumo/gate-thresholds/values-circle.json
"""

import torch

import veil
from _common import shapes_parser
from veil._io import write_json
from veil.evaluation.shapes_tasks import rows_naming, task_rows
from veil.training.sampling import encode_prompts

THRESHOLDS = (0.5, 0.55, 0.6, 0.62, 0.64, 0.66, 0.68, 0.7, 0.75, 0.8)


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("--artifact", required=True)
    args = parser.parse_args()
    pipe = veil.load_pipeline(args.model)
    method = veil.Artifact.load(args.artifact).attach(pipe)
    method.config.gate_threshold = 0.0  # the raw gate, nothing cut

    def gates(prompts):
        cond, uncond = encode_prompts(pipe, prompts), encode_prompts(pipe, [""] * len(prompts))
        latents = torch.zeros(len(prompts), pipe.unet.config.in_channels, 1, 1)  # only their equality matters
        return method.gates(torch.cat([latents, latents]), torch.cat([uncond, cond]))[args.concept][len(prompts):].tolist()

    paraphrases = sorted({r["prompt"] for r in rows_naming(task_rows("shapes_paraphrase"), args.concept)})
    others = sorted({r["prompt"] for r in task_rows("shapes_concepts", (0,)) if args.concept not in r["prompt"].split()})
    values = {"paraphrases": dict(zip(paraphrases, gates(paraphrases))), "other_captions": dict(zip(others, gates(others)))}
    opened = {str(t): {name: sum(v >= t for v in found.values()) for name, found in values.items()} for t in THRESHOLDS}
    record = {"model": args.model, "concept": args.concept, "artifact": args.artifact,
              "counts": {name: len(found) for name, found in values.items()},
              "median": {name: float(torch.tensor(list(found.values())).median()) for name, found in values.items()},
              "max_other_caption": max(values["other_captions"].values()), "opened_at_threshold": opened, "gates": values}
    write_json(args.out, record)
    for t, counts in opened.items():
        print(f"threshold {t}: paraphrases open {counts['paraphrases']}/{len(paraphrases)}, "
              f"other captions open {counts['other_captions']}/{len(others)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
