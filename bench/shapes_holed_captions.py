"""What the shapes model draws for a caption with its shape left out ("a red on a plain background"): the anchor
KPOP's hiding target had before the preset put another shape there (context_guide).

    python bench/shapes_holed_captions.py --seeds 0,1,2,3 --out bench/results/kpop/ablation-anchor/holed-captions.json

Prints, per colour, how often the classifier saw each shape over the four backgrounds and the seeds.
"""
import collections

from _common import ShapesProbe, shapes_parser
from veil._io import write_json
from veil.evaluation.concept_rate import evaluate_prompts
from veil.methods.base import ESDSamplingConfig
from veil.shapes.classifier import classify
from veil.shapes.data import BACKGROUNDS, COLOURS, canonical_prompt


def main():
    args = shapes_parser(__doc__).parse_args()
    probe = ShapesProbe(args)
    rows = [{"prompt": ESDSamplingConfig.place(canonical_prompt("{}", colour, background), ""), "seed": seed, "colour": colour}
            for colour in COLOURS for background in BACKGROUNDS for seed in probe.seeds]
    shapes = evaluate_prompts(probe.pipe, rows, classify, num_inference_steps=args.num_inference_steps)["labels"]["shape"]
    drawn = collections.defaultdict(collections.Counter)
    for row, shape in zip(rows, shapes):
        drawn[row["colour"]][shape] += 1
    for colour in COLOURS:
        print(f"{colour}: {dict(drawn[colour])}")
    print(f"example prompt: {rows[0]['prompt']!r}; {len(rows)} images")
    write_json(args.out, probe.record(prompts=sorted({r["prompt"] for r in rows}), drawn={c: dict(drawn[c]) for c in COLOURS}))


if __name__ == "__main__":
    main()
