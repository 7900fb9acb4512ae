"""SLD's presets on a model: the target's and every other concept's rate per preset, and how often SLD's
element-wise mask (``eps_prompt − eps_concept < threshold``) is on, for prompts of the concept and of
other concepts, along the sampling trajectory — the measurement behind "why MEDIUM does nothing here".

    OMP_NUM_THREADS=1 python bench/sld_presets.py --concept circle --out bench/results/sld/presets/circle.json
"""

import time

import torch

from _common import ShapesProbe, shapes_parser
from veil._io import write_json
from veil.methods.sld import SLD, SLDConfig
from veil.methods.sld.config import PRESETS
from veil.training.sampling import encode_prompts


def mask_fractions(pipe, concept, prompts, steps, guidance_scale, seed=0):
    """Per preset, the share of noise elements the SLD mask switches on, per prompt, averaged over steps."""
    cond = encode_prompts(pipe, prompts)
    uncond = encode_prompts(pipe, [""] * len(prompts))
    unsafe = encode_prompts(pipe, [concept] * len(prompts))
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    size = pipe.unet.config.sample_size
    latents = torch.randn((len(prompts), pipe.unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(seed))
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
    parser = shapes_parser(__doc__)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    args = parser.parse_args()

    probe = ShapesProbe(args)
    pipe, rows = probe.pipe, probe.canonical
    record = probe.record(guidance_scale=args.guidance_scale, images=len(rows), presets={}, base=probe.rates(rows))
    for preset in PRESETS:
        method = SLD(SLDConfig(concepts=[args.concept], preset=preset))
        method.attach(pipe)
        start = time.perf_counter()
        rates = probe.rates(rows, guidance_scale=args.guidance_scale)
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
