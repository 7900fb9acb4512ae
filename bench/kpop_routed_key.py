"""Is the key holder's pipeline the original model? KPOP's key routed to the prompts about its concept.

    OMP_NUM_THREADS=1 python bench/kpop_routed_key.py --concept circle \\
        --out bench/results/kpop/routed-key/circle-seed0.json

Hides the concept with the model's KPOP preset (``--set FIELD=VALUE`` changes it; ``--train-seed``), then draws
the canonical prompts (every shape × colour × background, ``--seeds``, default 0,1: the bench's rows) with the
original model, the public artifact, the key routed (attached only to prompts the gate finds about the concept,
:class:`veil.methods.gate.PromptGate` with its default numbers) and the key unrouted (attached to every prompt).
Each concept's rate is the share of the images of prompts naming it that show it; ``share_of_base`` divides by the
original model's. Bars for the routed key: the hidden concept and every other concept >= 95 % of base. The concept's
training synonyms ("a disc", ...) are drawn too, with the original, public and routed pipelines.
"""

import contextlib
import json
import time
from pathlib import Path

import veil
from _common import ShapesProbe, parse_set, shapes_parser
from veil._io import write_json
from veil.evaluation.shapes_tasks import rows_naming, task_rows
from veil.methods.kpop import KPOP
from veil.methods.presets import preset_for

BAR = 0.95


def shares(rates, base):
    """``{concept: rate / base rate}`` (4 decimals) over the concepts the original draws at all."""
    return {c: round(rates.get(c, 0.0) / b, 4) for c, b in base.items() if b > 0}


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--base-from", help="A result file of this bench with the same model, seeds and steps: its "
                        "original-model rates are used instead of drawing them again.")
    parser.add_argument("--variants", default="public,routed_key,unrouted_key", help="Which pipelines to draw.")
    parser.set_defaults(seeds="0,1")
    args = parser.parse_args()
    probe = ShapesProbe(args)
    pipe, rows = probe.pipe, probe.canonical
    synonyms = rows_naming(task_rows("shapes_synonyms", probe.seeds), args.concept)
    record = probe.record(train_seed=args.train_seed, bar_share_of_base=BAR, rows=len(rows), synonym_rows=len(synonyms))

    if args.base_from:
        earlier = json.loads(Path(args.base_from).read_text())
        same = {k: earlier.get(k) for k in ("model", "seeds", "num_inference_steps")}
        if same != {k: record[k] for k in same} or earlier.get("rows") != len(rows):
            parser.error(f"{args.base_from} was drawn with another model, seeds, steps or rows.")
        # The original model's rates do not depend on the concept hidden; its synonyms' do.
        record["base"] = {"rates": earlier["base"]["rates"], "synonyms": None, "from": args.base_from}
        start = time.perf_counter()
        record["base"]["synonyms"] = probe.rates(synonyms).get(args.concept)
        record["base"]["seconds"] = round(time.perf_counter() - start, 1)
    else:
        start = time.perf_counter()
        record["base"] = {"rates": probe.rates(rows), "synonyms": probe.rates(synonyms).get(args.concept), "seconds": None}
        record["base"]["seconds"] = round(time.perf_counter() - start, 1)
    base = record["base"]["rates"]

    settings = preset_for(KPOP, args.model, [args.concept]) | parse_set(args.set) | {"seed": args.train_seed}
    method = KPOP(KPOP.config_class.from_dict({**settings, "concepts": [args.concept]}))
    start = time.perf_counter()
    veil.fit(method, pipe, progress=False)
    record["train_seconds"] = round(time.perf_counter() - start, 1)
    print(f"trained in {record['train_seconds']} s", flush=True)

    variants = {"public": contextlib.nullcontext,
                "routed_key": lambda: method.unlocked(pipe, routed=True),
                "unrouted_key": lambda: method.unlocked(pipe, routed=False)}
    for name, context in ((n, variants[n]) for n in args.variants.split(",")):
        start = time.perf_counter()
        with context():
            rates = probe.rates(rows)
            synonym_rate = probe.rates(synonyms).get(args.concept) if name != "unrouted_key" else None
        share = shares(rates, base)
        others = {c: v for c, v in share.items() if c != args.concept}
        lowest = min(others, key=others.get)
        record[name] = {"rates": rates, "share_of_base": share, "concept_share_of_base": share.get(args.concept),
                        "lowest_other": {"concept": lowest, "share_of_base": others[lowest]},
                        "synonyms": synonym_rate, "seconds": round(time.perf_counter() - start, 1)}
        if name == "routed_key":
            record[name]["meets_bars"] = share.get(args.concept, 0) >= BAR and others[lowest] >= BAR
        print(f"{name}: {args.concept} {rates.get(args.concept, 0):.1%} ({share.get(args.concept, 0):.1%} of base), "
              f"lowest other {lowest} {others[lowest]:.1%} of base", flush=True)
        write_json(args.out, record)
    method.detach(pipe)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
