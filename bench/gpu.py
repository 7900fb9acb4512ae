"""Costs on one GPU: SD 1.5's architecture at 512 px (ESD-x 100 iterations, UCE, KPOP 50 steps, DuMo 50 steps),
SDXL's ESD-x 20 iterations at 1024 px, and generation throughput (50 DDIM steps, batch 8) of veil's generate
against a plain diffusers pipeline call; writes one JSON. Run through bench/gpu.sh:

    bash bench/gpu.sh                 # on a CUDA machine, bf16 mixed precision, gradient checkpointing
    bash bench/gpu.sh --smoke         # the same code path on the tiny model, on the CPU, in seconds

The models are random-weight, architecture-true builds (what a step costs does not depend on the weights).
"""

import argparse
import json
import os
import platform
import sys
import time

import torch

import veil

FULL = dict(
    model="sd15-random", sdxl="sdxl-random", resolution=512, sdxl_resolution=1024, device="cuda", mixed_precision="bf16",
    esd_steps=100, kpop_steps=50, dumo_steps=50, sdxl_steps=20, ddim_steps=50, images=16, image_steps=50, batch=8,
)
SMOKE = dict(
    model="tiny", sdxl=None, resolution=32, sdxl_resolution=None, device="cpu", mixed_precision="bf16",
    esd_steps=2, kpop_steps=2, dumo_steps=2, sdxl_steps=0, ddim_steps=4, images=4, image_steps=2, batch=2,
)
CONCEPT = "a cat"


def load(name, device):
    return veil.load_pipeline(name, device=device)


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device):
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def train_row(label, method_name, pipe, steps, settings, plan):
    """One method trained for ``steps`` steps (UCE: its fit) on ``pipe``; its cost record."""
    method_cls = veil.get_method(method_name)
    if method_cls.kind == "trained":
        settings = {"max_train_steps": steps, "ddim_steps": plan["ddim_steps"], "resolution": plan["resolution"],
                    "gradient_checkpointing": True, "mixed_precision": plan["mixed_precision"], **settings}
    method = method_cls(concepts=[CONCEPT], **settings)
    reset_peak(plan["device"])
    synchronize(plan["device"])
    start = time.perf_counter()
    cost = veil.fit(method, pipe, progress=False)
    synchronize(plan["device"])
    seconds = time.perf_counter() - start
    method.detach(pipe)
    return {"row": label, "steps": cost.get("steps", 0), "seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / max(1, cost.get("steps", 0)), 3), "peak_mem_mb": cost.get("peak_mem_mb")}


def generation_rows(pipe, plan):
    """Images per second of veil's generate and of a plain pipeline call, same prompts, seeds and sampler."""
    from diffusers import DDIMScheduler

    from veil.evaluation.sampling import generate

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    prompts, seeds = [CONCEPT] * plan["images"], list(range(plan["images"]))
    kwargs = dict(num_inference_steps=plan["image_steps"], guidance_scale=7.5)
    rows = []
    for label in ("veil generate", "StableDiffusionPipeline"):
        synchronize(plan["device"])
        start = time.perf_counter()
        if label == "veil generate":
            generate(pipe, prompts, seeds, batch_size=plan["batch"], resolution=plan["resolution"], **kwargs)
        else:
            for first in range(0, len(prompts), plan["batch"]):
                chunk = seeds[first : first + plan["batch"]]
                pipe(prompts[: len(chunk)], height=plan["resolution"], width=plan["resolution"],
                     generator=[torch.Generator("cpu").manual_seed(s) for s in chunk], **kwargs)
        synchronize(plan["device"])
        seconds = time.perf_counter() - start
        rows.append({"row": f"generation: {label}", "images": len(prompts), "batch": plan["batch"],
                     "num_inference_steps": plan["image_steps"], "seconds": round(seconds, 2),
                     "images_per_second": round(len(prompts) / seconds, 3)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="Tiny model, CPU, a few steps: checks the code path in seconds.")
    parser.add_argument("--out", default="bench/results/sd-scale/gpu/costs.json")
    args = parser.parse_args()
    plan = dict(SMOKE if args.smoke else FULL)
    if plan["device"] == "cuda" and not torch.cuda.is_available():
        print("No CUDA device is visible; run on a GPU machine, or pass --smoke for the CPU check.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = []
    pipe = load(plan["model"], plan["device"])
    rows.append(train_row("esd-x", "esd", pipe, plan["esd_steps"], {"train_method": "xattn"}, plan))
    rows.append(train_row("uce", "uce", pipe, 0, {}, plan))
    rows.append(train_row("kpop", "kpop", pipe, plan["kpop_steps"], {}, plan))
    rows.append(train_row("dumo", "dumo", pipe, plan["dumo_steps"], {"tlmo_max_train_steps": 0}, plan))
    # Sample from a freshly loaded copy, as users load it (training attached and detached four methods).
    del pipe
    pipe = load(plan["model"], plan["device"])
    rows += generation_rows(pipe, plan)
    del pipe
    if plan["sdxl"]:
        try:
            sdxl = load(plan["sdxl"], plan["device"])
            rows.append(train_row("sdxl esd-x", "esd", sdxl, plan["sdxl_steps"],
                                  {"train_method": "xattn", "resolution": plan["sdxl_resolution"]}, plan))
            del sdxl
        except (veil.VeilError, TypeError, RuntimeError) as error:
            rows.append({"row": "sdxl esd-x", "skipped": f"{type(error).__name__}: {error}"[:300]})
    device = torch.cuda.get_device_name() if plan["device"] == "cuda" else platform.processor() or platform.machine()
    result = {"device": device, "torch": torch.__version__, "smoke": args.smoke, "plan": plan, "rows": rows,
              "total_seconds": round(time.perf_counter() - started, 1)}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".tmp", "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
