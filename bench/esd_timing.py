"""Time ESD on a model: one iteration (sampling + loss + step) and a full run; writes JSON.

    python bench/esd_timing.py --model shapes --steps 200 --out bench/results/esd/timing/timing.json
"""

import argparse
import json
import os
import platform
import time

import torch

import veil


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench/results/esd/timing/timing.json")
    args = parser.parse_args()

    pipe = veil.load_pipeline(args.model, device=args.device)
    method = veil.get_method("esd")(concepts=[args.concept], max_train_steps=args.steps, learning_rate=args.learning_rate)
    start = time.perf_counter()
    cost = veil.fit(method, pipe, progress=False)
    wall = time.perf_counter() - start
    result = {
        "model": args.model,
        "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
        "steps": cost["steps"],
        "samples_per_trajectory": method.config.samples_per_trajectory,
        "ddim_steps": method.config.ddim_steps,
        "run_seconds": round(wall, 2),
        "seconds_per_iteration": round(wall / cost["steps"], 4),
        "peak_mem_mb": cost["peak_mem_mb"],
        "first_loss": cost["losses"][0]["main"],
        "last_loss": cost["losses"][-1]["main"],
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
