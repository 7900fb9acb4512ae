"""SLD's presets on a model: the target's and every other concept's rate per preset, and how often SLD's
element-wise mask (``eps_prompt − eps_concept < threshold``) is on, for prompts of the concept and of
other concepts, along the sampling trajectory — the measurement behind "why MEDIUM does nothing here".

    OMP_NUM_THREADS=1 python bench/sld_presets.py --concept circle --out bench/results/sld_presets_shapes_cpu.json
"""

import argparse
import time

import torch

import veil
from veil._io import write_json
from veil.evaluation.concept_rate import evaluate_prompts
from veil.methods.sld import SLD, SLDConfig
from veil.methods.sld.config import PRESETS
from veil.shapes.classifier import classify
from veil.shapes.data import canonical_prompts
from veil.training.sampling import encode_prompts


def mask_fractions(pipe, concept, prompts, steps, guidance_scale, seed=0):
    """Per preset, the share of noise elements the SLD mask switches on, per prompt, averaged over steps."""
    cond = encode_prompts(pipe, prompts)
    uncond = encode_prompts(pipe, [""] * len(prompts))
    unsafe = encode_prompts(pipe, [concept] * len(prompts))
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    latents = torch.randn((len(prompts), pipe.unet.config.in_channels, 8, 8), generator=torch.Generator().manual_seed(seed))
    shares = {name: torch.zeros(len(prompts)) for name in PRESETS}
    for t in scheduler.timesteps:
        with torch.no_grad():
            eps_u, eps_p, eps_s = pipe.unet(torch.cat([latents] * 3), t, encoder_hidden_states=torch.cat([uncond, cond, unsafe])).sample.chunk(3)
        difference = eps_p - eps_s
        for name, preset in PRESETS.items():
            scale = torch.clamp(difference.abs() * preset["sld_guidance_scale"], max=1.0)
            scale = torch.where(difference >= preset["threshold"], torch.zeros_like(scale), scale)
            shares[name] += (scale > 0.5).float().flatten(1).mean(1) / steps
        latents = scheduler.step(eps_u + guidance_scale * (eps_p - eps_u), t, latents).prev_sample
    return {name: {p: round(float(v), 3) for p, v in zip(prompts, values)} for name, values in shares.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    pipe = veil.load_pipeline(args.model)
    rows = canonical_prompts(seeds=(0,))
    record = {"model": args.model, "concept": args.concept, "num_inference_steps": args.num_inference_steps,
              "guidance_scale": args.guidance_scale, "images": len(rows), "presets": {}}
    record["base"] = evaluate_prompts(pipe, rows, classify, num_inference_steps=args.num_inference_steps)["rates"]
    for preset in PRESETS:
        method = SLD(SLDConfig(concepts=[args.concept], preset=preset))
        method.attach(pipe)
        start = time.perf_counter()
        rates = evaluate_prompts(pipe, rows, classify, num_inference_steps=args.num_inference_steps,
                                 guidance_scale=args.guidance_scale)["rates"]
        method.detach(pipe)
        others = {c: r for c, r in rates.items() if c != args.concept}
        record["presets"][preset] = {"target_rate": rates[args.concept], "min_other": min(others.values()),
                                     "min_other_concept": min(others, key=others.get), "rates": rates,
                                     "seconds": round(time.perf_counter() - start, 1)}
        print(preset, record["presets"][preset]["target_rate"], record["presets"][preset]["min_other"], flush=True)
    prompts = [f"a red {args.concept} on a plain background", f"a blue {args.concept} on a striped background",
               "a green square on a dotted background", "a yellow star on a plain background"]
    record["mask_on_share"] = mask_fractions(pipe, args.concept, prompts, args.num_inference_steps, args.guidance_scale)
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
