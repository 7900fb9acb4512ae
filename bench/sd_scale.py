"""Each method's cost per training step on Stable Diffusion 1.5's architecture, against a plain diffusers ESD step.

    python bench/sd_scale.py --out bench/results/sd-scale/cpu

The model is SD 1.5's published UNet, VAE and CLIP text encoder configuration with random weights (what a step
costs does not depend on the weights; the tokenizer is the bundled MiniLM one, padded to 77 tokens as CLIP's).
Every measurement runs in a process of its own, so that its peak resident memory is its own. Rows:

* one training step of each method (ESD xattn / noxattn / full / selfattn, KPOP, DuMo's EPR; UCE's closed-form
  fit) at latents of 32² and 64² (256 and 512 px), fp32, gradient checkpointing on; ESD-x again with it off;
* the reference: the same ESD-x step written as a plain diffusers training step (the ESD authors' loop:
  a frozen copy of the UNet, a partial DDIM trajectory, the two teacher passes, one loss step), at equal work:
  ``ddim_steps`` = ``samples_per_trajectory`` = N, so every step samples the trajectory to index N − 1 and trains
  on N latents, in veil and in the reference alike;
* 20 iterations of the authors' loop (one latent per trajectory, t_enc ~ U[0, N)) against veil's ESD-x with its
  trajectory reuse (one trajectory serves ``samples_per_trajectory`` = 4 latents: 5 steps for the same 20).

Peak memory is the process's peak resident set (``ru_maxrss``); the cost record's figure is checked against
the peak after the artifact is written.
"""

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
    downsample_padding=1, act_fn="silu", norm_eps=1e-5, center_input_sample=False, mid_block_scale_factor=1,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, act_fn="silu",
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
METHODS = {
    "esd-x": ("esd", {"train_method": "xattn"}),
    "esd-u": ("esd", {"train_method": "noxattn"}),
    "esd-full": ("esd", {"train_method": "full"}),
    "esd-selfattn": ("esd", {"train_method": "selfattn"}),
    "kpop": ("kpop", {}),
    "dumo": ("dumo", {"tlmo_max_train_steps": 0}),
    "uce": ("uce", {}),
}
CONCEPT = "a cat"


def build_sd15(seed=0):
    """A Stable Diffusion 1.5-architecture pipeline with random weights, fp32, on the CPU."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from veil.models import _minilm_tokenizer, _quiet_component_type_warning, _sd_scheduler

    torch.manual_seed(seed)
    unet, vae = UNet2DConditionModel(**SD15_UNET).eval(), AutoencoderKL(**SD15_VAE).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval()
    with _quiet_component_type_warning():
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=_minilm_tokenizer(77), unet=unet, scheduler=_sd_scheduler(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.veil_model_name = "sd15-architecture-random"
    return pipe


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# the reference: the ESD authors' loop, in plain diffusers -----------------------------------------------------
def reference_esd_x(pipe, steps, ddim_steps, t_encs_per_step, latent, guidance=3.0, lr=1e-5, seed=0):
    """``steps`` ESD-x iterations as the authors' diffusers script runs them: a frozen copy of the UNet as the
    teacher, a DDIM trajectory from noise with the trained UNet to the deepest ``t_enc``, the teacher's
    predictions for the concept and the empty prompt, one Adam step on the MSE to the negative-guidance target.
    ``t_encs_per_step(generator)`` gives one step's indices. Returns (seconds, trajectory UNet calls)."""
    from diffusers import DDIMScheduler

    generator = torch.Generator().manual_seed(seed)
    student = pipe.unet
    teacher = copy.deepcopy(student).requires_grad_(False)
    params = [p for n, p in student.named_parameters() if "attn2" in n]
    student.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(ddim_steps)
    with torch.no_grad():
        cond = pipe.encode_prompt([CONCEPT], "cpu", 1, False)[0]
        uncond = pipe.encode_prompt([""], "cpu", 1, False)[0]
    calls, start = count_scheduler_steps(), time.perf_counter()
    for _ in range(steps):
        t_encs = t_encs_per_step(generator)
        latents = torch.randn((1, 4, latent, latent), generator=generator) * scheduler.init_noise_sigma
        kept = {}
        with torch.no_grad():
            for index, t in enumerate(scheduler.timesteps):
                if index in t_encs:
                    kept[index] = latents
                if index >= max(t_encs):
                    break
                both = student(torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
                noise_uncond, noise_cond = both.chunk(2)
                latents = scheduler.step(noise_uncond + guidance * (noise_cond - noise_uncond), t, latents).prev_sample
            x_t = torch.cat([kept[i] for i in t_encs])
            timesteps = torch.tensor([int(torch.randint(1000 * i // ddim_steps, 1000 * (i + 1) // ddim_steps, (1,),
                                                        generator=generator)) for i in t_encs])
            batch = x_t.shape[0]
            e_0 = teacher(x_t, timesteps, encoder_hidden_states=uncond.expand(batch, -1, -1)).sample
            e_p = teacher(x_t, timesteps, encoder_hidden_states=cond.expand(batch, -1, -1)).sample
            target = e_0 - 1.0 * (e_p - e_0)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(student(x_t, timesteps, encoder_hidden_states=cond.expand(batch, -1, -1)).sample, target)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start, calls[0]


# one measurement, in its own process ------------------------------------------------------------------------------
def measure(spec):
    import veil
    from veil.artifact import Artifact

    torch.set_num_threads(1)
    latent, kind = spec["latent"], spec["kind"]
    pipe = build_sd15() if spec.get("model", "sd15") == "sd15" else veil.load_pipeline(spec["model"])
    out = {key: spec[key] for key in ("kind", "model", "latent", "tag", "ddim_steps", "steps") if key in spec}
    if kind in ("reference", "reference-20"):
        n = spec["ddim_steps"]
        if kind == "reference":
            pick = lambda g: torch.randperm(n, generator=g).tolist()  # every index: the trajectory to N − 1
        else:
            pick = lambda g: [int(torch.randint(n, (1,), generator=g))]  # the authors': one t_enc per iteration
        seconds, calls = reference_esd_x(pipe, spec["steps"], n, pick, latent)
        out.update(seconds=round(seconds, 2), seconds_per_step=round(seconds / spec["steps"], 2), trajectory_calls=calls,
                   peak_mem_mb=round(peak_rss_mb(), 1))
        return out
    name, settings = METHODS[spec["method"]]
    settings = {**settings, **spec.get("settings", {})}
    method_cls = veil.get_method(name)
    fields = {f for f in method_cls.config_class.__dataclass_fields__}
    if "resolution" in fields:
        settings.update(resolution=latent * pipe.vae_scale_factor, max_train_steps=spec["steps"])
    if name == "dumo":
        settings.setdefault("anchor_prompts", ["a dog"])
    method = method_cls(concepts=[CONCEPT], **settings)
    calls = count_scheduler_steps()  # the trajectories' guided UNet calls: equal work is checked, not assumed
    start = time.perf_counter()
    cost = veil.fit(method, pipe, progress=False)
    seconds = time.perf_counter() - start
    recorded = cost["peak_mem_mb"]
    with tempfile.TemporaryDirectory() as tmp:
        Artifact.from_method(method, pipe, cost).save(os.path.join(tmp, "artifact"))
    steps = max(1, cost.get("steps", 0))
    out.update(method=spec["method"], settings=spec.get("settings", {}), all_settings=settings, seconds=round(seconds, 2), seconds_per_step=round(seconds / steps, 2),
               steps=cost.get("steps", 0), peak_mem_mb=recorded, peak_mem_after_save_mb=round(peak_rss_mb(), 1))
    out["trajectory_calls"] = calls[0]
    return out


def count_scheduler_steps():
    """A one-element list that counts DDIM steps taken in this process from now on (one per guided UNet call)."""
    from diffusers import DDIMScheduler

    calls, step = [0], DDIMScheduler.step

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return step(self, *args, **kwargs)

    DDIMScheduler.step = counting
    return calls


def run(spec, log):
    """``spec`` measured in a fresh Python process; its JSON result (or the error)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        result = json.loads(lines[-1])
    else:  # a process killed for memory (-9) leaves no traceback
        result = {**spec, "returncode": proc.returncode, "error": proc.stderr.strip().splitlines()[-1:]}
    result["process_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result), file=log, flush=True)
    return result


def summary(runs):
    """The rows of every measurement in ``runs`` (the latest of each), each ESD-x row against the reference of
    the same latent side and ddim_steps."""
    latest = {}
    for r in runs:
        key = (r["kind"], r.get("method"), r["latent"], json.dumps(r.get("settings"), sort_keys=True), r.get("ddim_steps"), r.get("steps"))
        latest[key] = r
    runs = list(latest.values())
    references = {(r["latent"], r["ddim_steps"]): r for r in runs if r["kind"] == "reference" and "error" not in r}
    rows = []
    for r in runs:
        if r["kind"] != "method" or r.get("tag") == "reuse":
            continue
        settings = r.get("settings") or {}
        label = r["method"] + ("" if settings.get("gradient_checkpointing", True) else " (no checkpointing)")
        reference = references.get((r["latent"], settings.get("ddim_steps")))
        compared = r["method"] == "esd-x" and reference is not None and "error" not in r
        rows.append({
            "method": label, "model": "sd15-architecture", "resolution": r["latent"] * 8,
            "seconds_per_step": r.get("seconds_per_step"), "peak_mem_mb": r.get("peak_mem_mb"),
            "reference_seconds_per_step": reference["seconds_per_step"] if compared else None,
            "ratio": round(r["seconds_per_step"] / reference["seconds_per_step"], 3) if compared else None,
            "ddim_steps": settings.get("ddim_steps"), "error": r.get("error"), "returncode": r.get("returncode"),
        })
    reuse = []
    for model in sorted({r.get("model", "sd15") for r in runs if r["kind"] == "reference-20"}):
        ref20 = [r for r in runs if r["kind"] == "reference-20" and r.get("model", "sd15") == model and "error" not in r]
        veil20 = [r for r in runs if r.get("tag") == "reuse" and r.get("model", "sd15") == model and "error" not in r]
        if not (ref20 and veil20):
            continue
        ref20, veil20 = ref20[-1], veil20[-1]
        reuse.append({"model": model, "latent": ref20["latent"], "ddim_steps": ref20["ddim_steps"], "training_latents": 20,
                 "reference_seconds": ref20["seconds"], "reference_trajectory_calls": ref20["trajectory_calls"],
                 "veil_seconds": veil20["seconds"], "veil_steps": veil20["steps"],
                 "veil_trajectory_calls": veil20["trajectory_calls"], "ratio": round(veil20["seconds"] / ref20["seconds"], 3)})
    return sorted(rows, key=lambda row: (row["resolution"], row["method"])), reuse


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/sd-scale/cpu")
    parser.add_argument("--latents", default="32,64", help="Latent sides to measure (32: 256 px, 64: 512 px).")
    parser.add_argument("--methods", default=",".join(METHODS), help="Methods to measure ('' for none).")
    parser.add_argument("--ddim-steps", type=int, default=2, help="N of the per-step rows (every step samples to N − 1).")
    parser.add_argument("--no-reference", action="store_true", help="Skip the reference and ESD-x without checkpointing.")
    parser.add_argument("--reuse-ddim-steps", type=int, default=10, help="N of the 20-iteration comparison.")
    parser.add_argument("--reuse-latent", type=int, default=0, help="Latent side of the 20-iteration comparison (0: skip it).")
    parser.add_argument("--reuse-model", default="sd15", help="Model of the 20-iteration comparison: sd15 (SD 1.5's "
                        "architecture) or a name veil.load_pipeline takes, e.g. tiny.")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return

    os.makedirs(args.out, exist_ok=True)
    n = args.ddim_steps
    equal = {"ddim_steps": n, "samples_per_trajectory": n}
    log_path = os.path.join(args.out, "runs.jsonl")
    with open(log_path, "a") as log:
        for latent in [int(x) for x in args.latents.split(",") if x]:
            if not args.no_reference:
                run({"kind": "reference", "latent": latent, "ddim_steps": n, "steps": 1}, log)
                run({"kind": "method", "method": "esd-x", "latent": latent, "steps": 1,
                     "settings": {**equal, "gradient_checkpointing": False}}, log)
            for name in [m for m in args.methods.split(",") if m]:
                settings = {} if name == "uce" else {**equal, "gradient_checkpointing": True}
                run({"kind": "method", "method": name, "latent": latent, "steps": 1, "settings": settings}, log)
        if args.reuse_latent:
            m = args.reuse_ddim_steps
            model = args.reuse_model
            run({"kind": "reference-20", "model": model, "latent": args.reuse_latent, "ddim_steps": m, "steps": 20}, log)
            run({"kind": "method", "model": model, "method": "esd-x", "latent": args.reuse_latent, "steps": 5, "tag": "reuse",
                 "settings": {"ddim_steps": m, "samples_per_trajectory": 4}}, log)
    with open(log_path) as handle:
        runs = [json.loads(line) for line in handle if line.strip()]
    rows, reuse = summary(runs)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, one torch thread per process",
        "torch": torch.__version__, "precision": "fp32",
        "equal_work": "ddim_steps = samples_per_trajectory = N (the rows' ddim_steps): each step samples the trajectory "
                      "to index N - 1 and trains on N latents, in veil and in the reference alike",
        "rows": rows, "reuse_20_iterations": reuse,
        "bars": {"esd_x_step_ratio_max": 1.05, "reuse_20_ratio_max": 0.5,
                 "peak_mem_mb_max_512px": {"esd-x": 8192, "kpop": 8192, "dumo": 10240, "esd-full": 16384, "esd-u": 16384}},
    }
    path = os.path.join(args.out, "sd15-steps.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(path + ".tmp", path)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
