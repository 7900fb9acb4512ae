"""UCE on shapes concepts: paper mode (the authors' erasing script) against veil's shapes preset, on canonical
captions: each concept's rate and every other concept's rate as a share of the original model's.

    OMP_NUM_THREADS=1 python bench/uce_paper_mode.py --concepts circle,square --every 3 --num-inference-steps 10 \\
        --out bench/results/uce/paper-mode/rates.json

Variants: ``paper`` (the defaults on a model without a preset: the last subject token, the empty guide, nothing
preserved, lambda 0.5), ``paper-tokens-preset-sets`` (the preset's guide, preserve set and synonyms with the
authors' token selection and lambda) and ``veil-preset`` (every position, lambda 0.1: veil's shapes preset).
``--every N`` keeps every N-th canonical caption (a bounded run on a busy CPU); the original model's rates are
measured on the same captions.
"""

import time

from _common import ShapesProbe, shapes_parser
from veil._io import write_json
from veil.methods.presets import preset_for
from veil.methods.uce import UCE

PAPER = {"token_selection": "last_token", "regularization": 0.5}


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("--concepts", default="circle,square")
    parser.add_argument("--every", type=int, default=1, help="Keep every N-th canonical caption.")
    args = parser.parse_args()
    probe = ShapesProbe(args)
    rows = probe.canonical[:: args.every]
    record = probe.record(captions=len(rows), every=args.every)
    record["base"] = base = probe.rates(rows)
    for concept in args.concepts.split(","):
        preset = preset_for(UCE, args.model, [concept])
        variants = {"paper": {}, "paper-tokens-preset-sets": {**preset, **PAPER}, "veil-preset": preset}
        record[concept] = {}
        for name, settings in variants.items():
            method = UCE(concepts=[concept], **settings)
            start = time.perf_counter()
            method.fit(probe.pipe)
            fit_seconds = time.perf_counter() - start
            method.attach(probe.pipe)
            try:
                rates = probe.rates(rows)
            finally:
                method.detach(probe.pipe)
            shares = {c: round(rates[c] / base[c], 4) for c in rates if c != concept and base.get(c)}
            config = {f: getattr(method.config, f) for f in ("guide", "preserve_concepts", "token_selection", "regularization")}
            record[concept][name] = {"target_rate": rates[concept], "other_min_share": min(shares.values()),
                                     "other_mean_share": round(sum(shares.values()) / len(shares), 4), "config": config,
                                     "other_shares": shares, "rates": rates, "fit_seconds": round(fit_seconds, 3)}
            print(concept, name, rates[concept], min(shares.values()), record[concept][name]["other_mean_share"], flush=True)
    write_json(args.out, record)


if __name__ == "__main__":
    main()
