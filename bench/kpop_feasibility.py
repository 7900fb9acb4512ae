"""KPOP feasibility on a model: hide a concept, then its concept rate in public mode, with the key,
with a random key of matched norm and with the untrained key E(c)[:m] (the publicly known
initialisation); also the hiding and recovery losses over training. Writes JSON.

    python bench/kpop_feasibility.py --model shapes --concept circle --steps 200 \\
        --learning-rate 1e-4 --key-learning-rate 5e-3 --out bench/results/kpop_feasibility_cpu.json
"""

import argparse
import json
import os
import time

import torch

import veil
from veil.evaluation.concept_rate import evaluate_prompts
from veil.keys import random_key_like
from veil.methods.kpop import KPOP, KPOPConfig
from veil.shapes.classifier import classify
from veil.shapes.data import canonical_prompts
from veil.training.sampling import encode_prompts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--key-learning-rate", type=float, default=5e-3)
    parser.add_argument("--layers", default="mid")
    parser.add_argument("--loss-space", default="eps")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench/results/kpop_feasibility_cpu.json")
    args = parser.parse_args()

    pipe = veil.load_pipeline(args.model, device=args.device)
    rows = canonical_prompts(seeds=tuple(int(s) for s in args.seeds.split(",")))

    def rates():
        return evaluate_prompts(pipe, rows, classify, num_inference_steps=args.num_inference_steps)["rates"]

    config = KPOPConfig.paper([args.concept], max_train_steps=args.steps, learning_rate=args.learning_rate,
                              key_learning_rate=args.key_learning_rate, layers=args.layers, loss_space=args.loss_space)
    record = {"model": args.model, "config": config.to_dict(), "images_per_variant": len(rows),
              "num_inference_steps": args.num_inference_steps}
    record["base"] = rates()
    print("base", record["base"], flush=True)

    method = KPOP(config)
    steps, loss = [], method.loss

    def recording_loss(pipe, batch, phase):
        value = loss(pipe, batch, phase)
        if phase == "key":
            steps.append(dict(method.last_losses))
        return value

    method.loss = recording_loss
    start = time.perf_counter()
    veil.train(method, pipe, progress=True)
    record["train_seconds"] = round(time.perf_counter() - start, 1)
    del method.loss
    window = max(1, min(20, len(steps) // 5))
    record["losses"] = {
        name: {"first": sum(s[name] for s in steps[:window]) / window, "last": sum(s[name] for s in steps[-window:]) / window}
        for name in ("hide", "recover", "recover_key_step")
    }
    print("losses", record["losses"], flush=True)

    record["public"] = rates()
    print("public", record["public"], flush=True)
    with method.unlocked(pipe):
        record["with_key"] = rates()
    print("with_key", record["with_key"], flush=True)
    with method.unlocked(pipe, random_key_like(method.key, torch.Generator().manual_seed(1))):
        record["random_key"] = rates()
    print("random_key", record["random_key"], flush=True)
    init = encode_prompts(pipe, [args.concept])[0, : config.num_key_tokens].float().cpu()
    with method.unlocked(pipe, {args.concept: (init, init)}):
        record["untrained_key"] = rates()
    print("untrained_key", record["untrained_key"], flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
