"""Does a key-only finish on the trained UNet make KPOP's key recover more?

    OMP_NUM_THREADS=1 python bench/kpop_key_finish.py --concept square --train-seed 1 --runs 2 \\
        --finish 0,50,100 --out bench/results/kpop/ablation-key-finish/square-seed-1.json

Each run trains the model's KPOP preset on the concept (``--set FIELD=VALUE`` changes it), then moves the key
alone on ``L_recover`` with the UNet frozen (the public model does not change), and after each number of
finishing steps in ``--finish`` records the concept's rate with the key and with a random key of matched norm on
the canonical prompts that name it (``--seeds``, default 0,1: the bench's rows). The key's start is secret
(OS randomness), so runs with one seed differ; the JSON is rewritten after each run.
"""

import json
import time

import torch

from _common import ShapesProbe, parse_set, shapes_parser
from veil._io import write_json
from veil.methods.kpop.keys import random_key_like
from veil.methods.kpop import KPOP
from veil.methods.presets import preset_for
from veil.training.loop import train_stage


def finish_key(method, pipe, steps, learning_rate, generator):
    """``steps`` key-only steps on ``L_recover`` (the UNet frozen); returns the losses."""
    params = list(method.key_prompts.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    losses = []
    try:
        for _ in range(steps):
            batch = method.make_batch(pipe, generator)
            optimizer.zero_grad(set_to_none=True)
            loss = method.loss(pipe, batch, "key")
            loss.backward()
            optimizer.step()
            method.after_step("key")
            losses.append(float(loss.detach()))
    finally:
        for p in params:
            p.requires_grad_(False)
    return losses


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--finish", default="0,50,100", help="Finishing steps after which to measure (ascending).")
    parser.add_argument("--key-lr", type=float, default=None, help="The finish's key learning rate (default: the preset's).")
    parser.add_argument("--set", action="append", default=[])
    parser.set_defaults(seeds="0,1")
    args = parser.parse_args()
    probe = ShapesProbe(args)
    pipe, rows = probe.pipe, probe.target_rows
    record = probe.record(base=probe.rates(rows).get(args.concept), train_seed=args.train_seed, runs=[])
    milestones = [int(s) for s in args.finish.split(",")]
    for run in range(args.runs):
        settings = preset_for(KPOP, args.model, [args.concept]) | parse_set(args.set) | {"seed": args.train_seed}
        method = KPOP(KPOP.config_class.from_dict({**settings, "concepts": [args.concept]}))
        start = time.perf_counter()
        train_stage(method, pipe, "main", progress=False)  # the UNet and key; the finish is measured below
        row = {"train_seconds": round(time.perf_counter() - start, 1), "finish": {}}
        row["public"] = probe.rates(rows).get(args.concept)
        generator = torch.Generator().manual_seed(1000 + run)
        lr = args.key_lr or method.config.key_learning_rate
        done, seconds = 0, 0.0
        for target in milestones:
            start = time.perf_counter()
            losses = finish_key(method, pipe, target - done, lr, generator)
            seconds += time.perf_counter() - start
            done = target
            with method.unlocked(pipe):
                key_rate = probe.rates(rows).get(args.concept)
            with method.unlocked(pipe, random_key_like(method.key, torch.Generator().manual_seed(1))):
                random_rate = probe.rates(rows).get(args.concept)
            row["finish"][str(target)] = {"with_key": key_rate, "random_key": random_rate, "seconds": round(seconds, 1),
                                          "mean_recover_loss": round(sum(losses) / len(losses), 5) if losses else None}
            print(f"run {run} finish {target}: with key {key_rate:.1%}, random key {random_rate:.1%}, {seconds:.0f} s", flush=True)
        method.detach(pipe)
        record["runs"].append(row)
        write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
