"""How long will a from-scratch build of shapes world 2 take on 2 idle cores, and how large is its bundle?

A timed slice, robust to a busy machine: each cost that differs between the worlds (rendering an image, a
UNet training step at batch 64, a UNet sampling step at batch 240 = 120 images with guidance) is measured
for world 1 and world 2 in alternating blocks in one process, so that both see the same load. World 2's
idle cost is world 1's idle cost, read from the bundled model's own build log (made on this project's
2-core machine), times the measured ratio. Costs the worlds share (the VAE and classifier steps, caption
encoding and latent encoding per item) come from that log directly. Rendering is projected from this run's
own rate (that log's data stage was a cache load): an upper bound. The plan is world 2's default
schedule (``veil.shapes.train.WORLD_DEFAULTS[2]``); the bundle size is counted from the configurations.

    python bench/shapes_world2_plan.py --out bench/results/shapes_world2/build-plan [--unet-steps 60]

``--classifier-steps N`` (with ``--unet-steps 0``: only this, into ``classifier.json``) trains the world-2
classifier for N steps on clean renders and reports its accuracy per head on 3,000 held-out renders (per style too, and which shapes and styles it
confuses): the renderer's distinguishability check, and whether the build's classifier schedule reaches the
99 % bar.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from pathlib import Path

from veil.shapes import data, world2, world2_build
from veil.shapes import train as T


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def unet_trainer(config):
    """A UNet with its optimiser and EMA, and one training step of the build at batch 64 (random latents and
    caption states: the cost does not depend on them)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet, ema = UNet2DConditionModel(**config), UNet2DConditionModel(**config)
    ema.requires_grad_(False)
    params, ema_params = list(unet.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)

    def step():
        z, ctx = torch.randn(64, 4, 8, 8), torch.randn(64, 32, 384)
        t = torch.randint(0, 1000, (64,))
        loss = F.mse_loss(unet(z, t, encoder_hidden_states=ctx).sample, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 0.001)

    @torch.no_grad()
    def sample_step():  # one DDIM step of 120 images with classifier-free guidance
        unet(torch.randn(240, 4, 8, 8), torch.full((240,), 500), encoder_hidden_states=torch.randn(240, 32, 384))

    return unet, step, sample_step


def alternate(fns, rounds, reps):
    """Seconds per call of each function, measured in alternating blocks of ``reps`` calls (median of blocks)."""
    for fn in fns.values():
        fn()  # warm-up
    blocks = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            blocks[k].append(timed(lambda: [fn() for _ in range(reps)]) / reps)
    return {k: {"median_s": statistics.median(v), "blocks_s": [round(b, 4) for b in v]} for k, v in blocks.items()}


# World 1's build record (its train log, classifier record and sample grid), made on this project's 2-core machine.
WORLD1_BUILD = Path(__file__).resolve().parent / "results" / "shapes" / "world1-build"


def world1_reference():
    """World 1's idle costs from its build log."""
    log = json.loads((WORLD1_BUILD / "train_log.json").read_text())
    st = log["stages"]
    two = [c["s_per_step"] for c in st["unet"]["thread_choices"] if c["threads"] == 2]
    ev = st["eval"]
    images = sum(ev[k]["n"] for k in ("canonical", "train_synonyms", "paraphrase_candidates"))
    return {
        "source": "bench/results/shapes/world1-build/train_log.json (the world-1 build, 2 threads)",
        "vae_s_per_step": st["vae"]["seconds"] / st["vae"]["steps"],  # with its validation every 100 steps
        "latent_encode_s_per_image": st["latents"]["encode_seconds"] / st["data"]["n_train"],
        "latent_roundtrip_s_per_image": st["latents"]["roundtrip_seconds"] / (st["latents"]["n_roundtrip_train"] + st["data"]["n_val"]),
        "classifier_s_per_step": st["classifier"]["seconds"] / st["classifier"]["steps"],  # with its evaluation
        "caption_s_per_caption": st["captions"]["seconds"] / st["captions"]["n_captions"],
        "unet_s_per_step": statistics.median(two),
        "unet_s_per_step_note": "median of the 2-thread probes of the adaptive thread count",
        "sample_s_per_image": sum(ev[k]["seconds"] for k in ("canonical", "train_synonyms", "paraphrase_candidates")) / images,
        "eval_overhead_s": ev["seconds"] - sum(ev[k]["seconds"] for k in ("canonical", "train_synonyms", "paraphrase_candidates")),
    }


def world2_eval_images(plan):
    seeds = list(range(plan["eval_seeds"]))
    sets = world2_build.eval_sets(seeds)
    phrasings = len(world2.paraphrase_phrasings())
    grid = len(world2_build.grid_rows()[0])
    return {**{k: len(v) for k, v in sets.items()}, "paraphrase_candidates": phrasings * plan["para_per_phrasing"],
            "grid": grid}


def bundle_bytes(unet_config):
    """fp16 UNet and VAE, the tokenizer and classifier files as world 1 ships them, the classifier's extra head."""
    from diffusers import UNet2DConditionModel

    from veil.shapes import CLASSIFIER_PATH, PIPELINE_DIR

    unet = sum(p.numel() for p in UNet2DConditionModel(**unet_config).parameters()) * 2
    vae = (PIPELINE_DIR / "vae" / "diffusion_pytorch_model.safetensors").stat().st_size
    tokenizer = sum(f.stat().st_size for f in (PIPELINE_DIR / "tokenizer").iterdir())
    style_head = (2 * 96 + 1) * len(world2.STYLES) * 4 + (2 * 96 + 1) * (len(world2.SHAPES) - len(data.SHAPES)) * 4
    # World 1's classifier file without world 2's extra heads (counted below), paraphrase set and records.
    small = (CLASSIFIER_PATH.stat().st_size - style_head + (PIPELINE_DIR.parent / "paraphrase_prompts.csv").stat().st_size
             + sum((WORLD1_BUILD / f).stat().st_size for f in ("classifier.json", "samples.png", "train_log.json")))
    parts = {"unet_fp16": unet, "vae_fp16": vae, "tokenizer": tokenizer, "classifier_and_logs_as_world1": small,
             "classifier_extra_heads": style_head}
    return {**parts, "total": sum(parts.values())}


def classifier_check(steps, n_train, threads, seed=0):
    """Train the world-2 classifier on clean renders for ``steps``; accuracy per head on 3,000 new renders."""
    from veil.shapes.classifier import accuracy, world_heads

    t0 = time.time()
    x, y = world2.make_dataset(n_train, seed=seed * 1000 + 1)
    xv, yv = world2.make_dataset(3000, seed=seed * 1000 + 2)
    render_s = time.time() - t0
    args = argparse.Namespace(seed=seed, clf_lr=2e-3, clf_batch=128, clf_steps=steps, clf_minutes=None, threads=threads,
                              resume=False)
    model, info = T.train_classifier(args, world_heads(2), [(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y))])
    acc = accuracy(model, xv, yv)
    per_style = {}
    for j, style in enumerate(world2.STYLES):
        sel = yv[:, 3] == j
        per_style[style] = accuracy(model, xv[sel], yv[sel])
    pred = model.predict(xv)
    confusion = {}
    for j, kind in ((0, "shape"), (3, "style")):  # true -> predicted, with the other axis's value
        other = world2.STYLES if kind == "shape" else world2.SHAPES
        for label, guess, o in zip(yv[:, j], pred[kind], yv[:, 3 - j]):
            if label != guess:
                key = f"{world2.AXES[kind][label]}->{world2.AXES[kind][guess]} ({other[o]})"
                confusion[key] = confusion.get(key, 0) + 1
    return {"steps": info["steps"], "train_seconds": info["seconds"], "n_train_renders": n_train,
            "render_seconds": round(render_s, 1), "n_val_renders": 3000, "accuracy": acc, "accuracy_by_style": per_style,
            "confusions": dict(sorted(confusion.items(), key=lambda kv: -kv[1])), "loss_history": info["history"],
            "meets_99": all(v >= 0.99 for v in acc.values())}


def timing(args):
    """The timed slice and the projection of the build's stages."""
    started = time.time()
    load_before = os.getloadavg()
    rng1, rng2 = np.random.default_rng(0), np.random.default_rng(0)
    render = alternate({"world1": lambda: data.make_dataset(50, int(rng1.integers(1 << 30))),
                        "world2": lambda: world2.make_dataset(50, int(rng2.integers(1 << 30)))}, rounds=6, reps=1)
    render = {k: {"s_per_image": v["median_s"] / 50, "blocks_s": v["blocks_s"]} for k, v in render.items()}
    _, step1, sample1 = unet_trainer(T.UNET_CONFIG)
    _, step2, sample2 = unet_trainer(T.UNET2_CONFIG)
    reps = 5
    unet = alternate({"world1": step1, "world2": step2}, rounds=max(1, args.unet_steps // reps), reps=reps)
    sampling = alternate({"world1": sample1, "world2": sample2}, rounds=5, reps=2)

    ref = world1_reference()
    ratio = {"render": render["world2"]["s_per_image"] / render["world1"]["s_per_image"],
             "unet_train_step": unet["world2"]["median_s"] / unet["world1"]["median_s"],
             "unet_sample_step": sampling["world2"]["median_s"] / sampling["world1"]["median_s"]}
    plan = dict(T.WORLD_DEFAULTS[2])
    n_captions = len(world2_build.caption_table(0, plan["captions_per_combo"], max(1, plan["captions_per_combo"] // 2))[0])
    images = world2_eval_images(plan)
    stages = {
        # The bundled log's data stage is a cache load, so rendering is projected from this run's own rate: an upper
    # bound (this machine is busy; idle renders are faster).
    "data": (plan["n_train"] + plan["n_val"]) * render["world2"]["s_per_image"],
        "vae": plan["vae_steps"] * ref["vae_s_per_step"],
        "latents": plan["n_train"] * ref["latent_encode_s_per_image"]
                   + (plan["n_roundtrip"] + plan["n_val"]) * ref["latent_roundtrip_s_per_image"],
        "classifier": plan["clf_steps"] * ref["classifier_s_per_step"],
        "captions": n_captions * ref["caption_s_per_caption"],
        "unet": plan["unet_steps"] * ref["unet_s_per_step"] * ratio["unet_train_step"],
        "eval": sum(images.values()) * ref["sample_s_per_image"] * ratio["unet_sample_step"] + ref["eval_overhead_s"],
    }
    total = sum(stages.values())
    result = {
        "question": "How long does a from-scratch build of shapes world 2 take on 2 idle cores, and how large is its bundle?",
        "measured_here": {"render": render, "unet_train_step_batch64": unet, "unet_sample_step_batch240": sampling,
                          "threads": args.threads, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                          "seconds": round(time.time() - started, 1)},
        "world2_over_world1": ratio,
        "world1_idle_reference": ref,
        "plan": {**plan, "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in T.UNET2_CONFIG.items()},
                 "n_captions": n_captions, "eval_images": images},
        "projected_idle_seconds": {k: round(v, 1) for k, v in stages.items()},
        "projected_idle_minutes_total": round(total / 60, 1),
        "projected_world2_unet_s_per_step": ref["unet_s_per_step"] * ratio["unet_train_step"],
        "bundle_bytes": bundle_bytes(T.UNET2_CONFIG),
        "bars": {"minutes": 90, "bundle_mb": 30},
    }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--unet-steps", type=int, default=60, help="timed UNet training steps per world (0: no timing)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--classifier-steps", type=int, default=0, help="also train and check the world-2 classifier")
    parser.add_argument("--classifier-renders", type=int, default=20000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    result = {}
    if args.unet_steps:
        result = timing(args)
    if args.classifier_steps:
        result["classifier_check"] = classifier_check(args.classifier_steps, args.classifier_renders, args.threads)
    name = "plan.json" if args.unet_steps else "classifier.json"
    with open(os.path.join(args.out, name), "w") as handle:
        json.dump(result, handle, indent=2)
    if args.unet_steps:
        print(json.dumps({k: result[k] for k in ("world2_over_world1", "projected_idle_seconds", "projected_idle_minutes_total")}, indent=2))
        print(f"bundle {result['bundle_bytes']['total'] / 1e6:.1f} MB")
    if args.classifier_steps:
        print(json.dumps({k: result["classifier_check"][k] for k in ("steps", "train_seconds", "accuracy", "meets_99")}))


if __name__ == "__main__":
    main()
