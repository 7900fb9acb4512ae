"""KPOP ablations on a model: each variant is the model's KPOP preset with some fields changed; for each,
the concept rate in public mode (canonical prompts and training synonyms), with the trained key, with a
random key of matched norm, the other concepts' rates with and without the key, and the training time.

    OMP_NUM_THREADS=1 python bench/kpop_ablation.py --concept circle \\
        --variant preset= --variant x0=loss_space=x0 --variant key_lr_1e-3=key_learning_rate=1e-3 \\
        --out bench/results/kpop/ablation-loss-space/circle.json

``--variant NAME=FIELD=VALUE[,FIELD=VALUE]`` (``NAME=`` alone: the preset unchanged). Variants run one
after another; the JSON is rewritten after each, so an interrupted run keeps what it finished.
"""

import json
import os
import time

import torch

import veil
from _common import ShapesProbe, parse_named_settings, shapes_parser
from veil._io import write_json
from veil.methods.kpop.keys import random_key_like
from veil.methods.kpop import KPOP
from veil.methods.presets import preset_for


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("--variant", action="append", required=True)
    args = parser.parse_args()

    probe = ShapesProbe(args)
    pipe, canonical, synonyms, target_rows, rates = probe.pipe, probe.canonical, probe.synonyms, probe.target_rows, probe.rates
    record = probe.record(base=rates(canonical), variants={})
    if os.path.exists(args.out):
        with open(args.out) as handle:
            previous = json.load(handle)
        if previous.get("concept") == args.concept:
            record["variants"] = previous.get("variants", {})
    for text in args.variant:
        name, changes = parse_named_settings(text)
        settings = preset_for(KPOP, args.model, [args.concept]) | changes
        method = KPOP(KPOP.config_class.from_dict({**settings, "concepts": [args.concept]}))
        start = time.perf_counter()
        cost = veil.fit(method, pipe, progress=True)
        seconds = time.perf_counter() - start
        row = {"changes": changes, "config": method.config.to_dict(), "train_seconds": round(seconds, 1),
               "final_loss": cost["losses"][-1] if cost.get("losses") else None}
        row["public"] = rates(canonical)
        row["public_synonyms"] = rates(synonyms).get(args.concept)
        with method.unlocked(pipe):
            row["with_key"] = rates(canonical)
        with method.unlocked(pipe, random_key_like(method.key, torch.Generator().manual_seed(1))):
            row["random_key"] = rates(target_rows).get(args.concept)
        method.detach(pipe)
        record["variants"][name] = row
        print(name, json.dumps({k: row[k] for k in ("train_seconds", "public_synonyms", "random_key")}),
              "public", row["public"].get(args.concept), "with key", row["with_key"].get(args.concept), flush=True)
        write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
