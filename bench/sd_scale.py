"""Each method's cost per training step on Stable Diffusion's architectures, against a plain diffusers ESD step.

    python bench/sd_scale.py --out bench/results/sd-scale/cpu                      # SD 1.5, latents 32² and 64²
    python bench/sd_scale.py --model sdxl-random --latents 64 --mixed-precision bf16 --checkpointing on

The models are veil's architecture-true random-weight builds (``sd15-random``, ``sdxl-random``): what a step costs
does not depend on the weights. Every measurement runs in a process of its own, so that its peak resident memory
is its own. Rows:

* one training step of each method (ESD xattn / noxattn / full / selfattn, KPOP, DuMo's EPR; UCE's closed-form
  fit) at each latent side (32²: 256 px, 64²: 512 px), gradient checkpointing on, trained as ``veil erase`` trains;
* the reference: the same ESD-x step written as a plain diffusers training step (the ESD authors' loop:
  a frozen copy of the UNet, a partial DDIM trajectory, the two teacher passes, one loss step), at equal work:
  ``ddim_steps`` = ``samples_per_trajectory`` = N, so every step samples the trajectory to index N − 1 and trains
  on N latents, in veil and in the reference alike, with the same gradient checkpointing and precision;
* 20 iterations of the authors' loop (one latent per trajectory, t_enc ~ U[0, N), N = 50) against veil's ESD-x
  with its trajectory reuse (one trajectory serves ``samples_per_trajectory`` = 4 latents: 5 steps for the same 20).

Times are wall-clock seconds and the process's CPU seconds (one thread: on a shared machine the CPU time is the
steadier measure of the work). Peak memory is the process's peak resident set (``ru_maxrss``); the cost record's
figure is checked against the peak after the artifact is written.
"""

import argparse
import contextlib
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

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


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# the reference: the ESD authors' loop, in plain diffusers -----------------------------------------------------
def plain_conditioning(pipe, latent):
    """The concept's and the unconditional UNet inputs as the stock pipeline makes them: ``(cond, uncond, added)``,
    ``added(states, batch)`` giving a call's ``added_cond_kwargs`` (SDXL's pooled text and time ids; ``None`` on
    SD 1.x/2.x). SDXL's unconditional input is zeros where the pipeline's config sets ``force_zeros_for_empty_prompt``,
    as its ``__call__`` does without a negative prompt."""
    with torch.no_grad():
        if not hasattr(pipe, "text_encoder_2"):
            cond = pipe.encode_prompt([CONCEPT], "cpu", 1, False)[0]
            uncond = pipe.encode_prompt([""], "cpu", 1, False)[0]
            return (cond, None), (uncond, None), lambda pooled, batch: None
        cond, _, pooled, _ = pipe.encode_prompt([CONCEPT], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        if pipe.config.force_zeros_for_empty_prompt:
            uncond, uncond_pooled = torch.zeros_like(cond), torch.zeros_like(pooled)
        else:
            uncond, _, uncond_pooled, _ = pipe.encode_prompt([""], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    side = latent * pipe.vae_scale_factor
    time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=cond.dtype)

    def added(pooled, batch):
        return {"text_embeds": pooled.expand(batch, -1), "time_ids": time_ids.expand(batch, -1)}

    return (cond, pooled), (uncond, uncond_pooled), added


def reference_esd_x(pipe, steps, ddim_steps, t_encs_per_step, latent, guidance=3.0, lr=1e-5, seed=0,
                    gradient_checkpointing=False, mixed_precision="no", teacher="copy"):
    """``steps`` ESD-x iterations as the authors' diffusers script runs them: a frozen copy of the UNet as the
    teacher, a DDIM trajectory from noise with the trained UNet to the deepest ``t_enc``, the teacher's
    predictions for the concept and the empty prompt, one Adam step on the MSE to the negative-guidance target.
    ``t_encs_per_step(generator)`` gives one step's indices. With ``mixed_precision="bf16"``, as diffusers' training
    scripts do it: the frozen weights (the teacher, the student's untrained ones) in bf16, the trained ones and Adam
    in float32, every pass under autocast. The text encoders and the VAE are dropped once the prompts are encoded.
    ``teacher="swap"``, where a second UNet does not fit in memory (SDXL on a 24 GB machine): the teacher passes run
    the student with a frozen copy of the trained tensors swapped in, the same computation as a copy's.
    Returns (the :class:`StepClock` of the iterations, trajectory UNet calls)."""
    from diffusers import DDIMScheduler

    generator = torch.Generator().manual_seed(seed)
    (cond, cond_pooled), (uncond, uncond_pooled), added = plain_conditioning(pipe, latent)
    student, scheduler = pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config)
    for name in [n for n, c in pipe.components.items() if isinstance(c, torch.nn.Module) and n != "unet"]:
        setattr(pipe, name, None)  # only the UNet trains
    params = [p for n, p in student.named_parameters() if "attn2" in n]
    student.requires_grad_(False)
    half = {"bf16": torch.bfloat16}.get(mixed_precision)
    if half is not None:
        trained = {id(p) for p in params}
        for p in student.parameters():
            p.data = p.data.float() if id(p) in trained else p.data.to(half)
    if teacher == "copy":
        frozen = copy.deepcopy(student).requires_grad_(False)
        if half is not None:
            frozen.to(half)
        teacher_passes = lambda: contextlib.nullcontext(frozen)  # noqa: E731
    else:
        originals = [p.detach().to(half or p.dtype, copy=True) for p in params]

        @contextlib.contextmanager
        def teacher_passes():
            trained = [p.data for p in params]
            for p, original in zip(params, originals):
                p.data = original
            try:
                yield student
            finally:
                for p, tensor in zip(params, trained):
                    p.data = tensor
    for p in params:
        p.requires_grad_(True)
    if gradient_checkpointing:
        student.enable_gradient_checkpointing()
    optimizer = torch.optim.Adam(params, lr=lr)
    autocast = (lambda: torch.autocast("cpu", dtype=half)) if half is not None else contextlib.nullcontext
    scheduler.set_timesteps(ddim_steps)
    calls, clock = count_scheduler_steps(), StepClock()
    for _ in range(steps):
        clock.tick()
        t_encs = t_encs_per_step(generator)
        latents = torch.randn((1, 4, latent, latent), generator=generator) * scheduler.init_noise_sigma
        kept = {}
        with torch.no_grad(), autocast():
            for index, t in enumerate(scheduler.timesteps):
                if index in t_encs:
                    kept[index] = latents
                if index >= max(t_encs):
                    break
                both = student(torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([uncond, cond]),
                               added_cond_kwargs=added(torch.cat([uncond_pooled, cond_pooled]), 2) if cond_pooled is not None else None).sample
                noise_uncond, noise_cond = both.chunk(2)
                latents = scheduler.step(noise_uncond + guidance * (noise_cond - noise_uncond), t, latents).prev_sample.float()
            x_t = torch.cat([kept[i] for i in t_encs])
            timesteps = torch.tensor([int(torch.randint(1000 * i // ddim_steps, 1000 * (i + 1) // ddim_steps, (1,),
                                                        generator=generator)) for i in t_encs])
            batch = x_t.shape[0]
            extra = lambda pooled: added(pooled, batch) if pooled is not None else None  # noqa: E731
            with teacher_passes() as unet:
                e_0 = unet(x_t, timesteps, encoder_hidden_states=uncond.expand(batch, -1, -1), added_cond_kwargs=extra(uncond_pooled)).sample
                e_p = unet(x_t, timesteps, encoder_hidden_states=cond.expand(batch, -1, -1), added_cond_kwargs=extra(cond_pooled)).sample
            target = e_0 - 1.0 * (e_p - e_0)
        optimizer.zero_grad()
        with autocast():
            prediction = student(x_t, timesteps, encoder_hidden_states=cond.expand(batch, -1, -1), added_cond_kwargs=extra(cond_pooled)).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
        loss.backward()
        optimizer.step()
    clock.tick()
    return clock, calls[0]


# one measurement, in its own process ------------------------------------------------------------------------------
def measure(spec):
    import veil
    from veil.artifact import Artifact

    torch.set_num_threads(1)
    latent, kind = spec["latent"], spec["kind"]
    pipe = veil.load_pipeline(spec.get("model", "sd15-random"))
    out = {key: spec[key] for key in ("kind", "model", "latent", "tag", "ddim_steps", "steps", "gradient_checkpointing",
                                      "mixed_precision", "teacher") if key in spec}
    out["resolution"] = latent * int(pipe.vae_scale_factor)
    if kind in ("reference", "reference-20"):
        n = spec["ddim_steps"]
        if kind == "reference":
            pick = lambda g: torch.randperm(n, generator=g).tolist()  # every index: the trajectory to N − 1
        else:
            pick = lambda g: [int(torch.randint(n, (1,), generator=g))]  # the authors': one t_enc per iteration
        clock, calls = reference_esd_x(
            pipe, spec["steps"], n, pick, latent, gradient_checkpointing=spec.get("gradient_checkpointing", False),
            mixed_precision=spec.get("mixed_precision", "no"), teacher=spec.get("teacher", "copy"))
        out.update(**clock.record(), trajectory_calls=calls, peak_mem_mb=round(peak_rss_mb(), 1))
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
    clock, make_batch = StepClock(), method.make_batch

    def timed_make_batch(*args, **kwargs):
        clock.tick()  # a step starts with its batch
        return make_batch(*args, **kwargs)

    method.make_batch = timed_make_batch
    start, cpu_start = time.perf_counter(), time.process_time()
    cost = veil.fit(method, pipe, progress=False, restore_frozen=False)  # as the command line trains
    clock.tick()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    recorded = cost["peak_mem_mb"]
    with tempfile.TemporaryDirectory() as tmp:
        Artifact.from_method(method, pipe, cost).save(os.path.join(tmp, "artifact"))
    out.update(method=spec["method"], settings=spec.get("settings", {}), all_settings=settings,
               steps=cost.get("steps", 0), peak_mem_mb=recorded, peak_mem_after_save_mb=round(peak_rss_mb(), 1))
    if len(clock.wall) > 1:  # a trained method: its steps' times; the fit's whole time beside them
        out.update(**clock.record(), fit_seconds=round(seconds, 2), fit_cpu_seconds=round(cpu_seconds, 2))
    else:  # a closed-form fit
        out.update(seconds=round(seconds, 2), seconds_per_step=round(seconds, 2), cpu_seconds=round(cpu_seconds, 2),
                   cpu_seconds_per_step=round(cpu_seconds, 2))
    out["trajectory_calls"] = calls[0]
    return out


class StepClock:
    """Wall and CPU clock readings at the start of each step and at the end of the last: each step's seconds. A step's
    figure is the median of the steps after the first (the first pays one-time costs: the prompts' encoding, the
    allocator's first requests), or the only step's."""

    def __init__(self):
        self.wall, self.cpu = [], []

    def tick(self):
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def record(self):
        wall = [b - a for a, b in zip(self.wall, self.wall[1:])]
        cpu = [b - a for a, b in zip(self.cpu, self.cpu[1:])]
        typical = lambda values: statistics.median(values[1:] if len(values) > 1 else values)  # noqa: E731
        return {"seconds": round(sum(wall), 2), "cpu_seconds": round(sum(cpu), 2),
                "step_seconds": [round(v, 2) for v in wall], "step_cpu_seconds": [round(v, 2) for v in cpu],
                "seconds_per_step": round(typical(wall), 2), "cpu_seconds_per_step": round(typical(cpu), 2)}


def count_scheduler_steps():
    """A one-element list that counts DDIM steps taken in this process from now on (one per guided UNet call)."""
    from diffusers import DDIMScheduler

    calls, step = [0], DDIMScheduler.step

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return step(self, *args, **kwargs)

    DDIMScheduler.step = counting
    return calls


def first_to_go():
    """In the measured process: were memory to run out, the kernel ends it before any other job on the machine."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass


def run(spec, log):
    """``spec`` measured in a fresh Python process; its JSON result (or the error)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                          preexec_fn=first_to_go)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        result = json.loads(lines[-1])
    else:  # a process killed for memory (-9) leaves no traceback
        errors = [line for line in proc.stderr.splitlines() if "Error" in line][-1:]
        killed = [f"killed by signal {-proc.returncode} (9: the kernel's out-of-memory killer)"] if proc.returncode < 0 else []
        result = {**spec, "returncode": proc.returncode, "error": killed + errors}
    result["process_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result), file=log, flush=True)
    return result


MODEL_NAMES = {"sd15": "sd15-random"}  # the bench's first rows name SD 1.5's architecture "sd15"


def _model(run):
    name = run.get("model", "sd15")
    return MODEL_NAMES.get(name, name)


def _checkpointing(run):
    if run["kind"] == "method":
        return bool((run.get("settings") or {}).get("gradient_checkpointing", False))
    return bool(run.get("gradient_checkpointing", False))


def _precision(run):
    if run["kind"] == "method":
        return (run.get("settings") or {}).get("mixed_precision", "no")
    return run.get("mixed_precision", "no")


def summary(runs):
    """The rows of every measurement in ``runs`` (the latest of each), each ESD-x row against the reference of the
    same model, latent side, ddim_steps, gradient checkpointing and precision; the 20-iteration comparisons."""
    latest = {}
    for r in runs:
        key = (r["kind"], _model(r), r.get("method"), r["latent"], json.dumps(r.get("settings"), sort_keys=True),
               r.get("ddim_steps"), _checkpointing(r), _precision(r), r.get("tag"))
        latest[key] = r
    runs = list(latest.values())
    references = {(_model(r), r["latent"], r["ddim_steps"], _checkpointing(r), _precision(r)): r
                  for r in runs if r["kind"] == "reference" and "error" not in r}
    rows = []
    for r in runs:
        if r["kind"] != "method" or r.get("tag") == "reuse":
            continue
        settings = r.get("settings") or {}
        label = r["method"]
        if r["method"] != "uce" and not _checkpointing(r):
            label += " (no checkpointing)"
        reference = references.get((_model(r), r["latent"], settings.get("ddim_steps"), _checkpointing(r), _precision(r)))
        compared = r["method"] == "esd-x" and reference is not None and "error" not in r
        ratio = lambda field: round(r[field] / reference[field], 3) if compared and field in r and field in reference else None  # noqa: E731
        rows.append({
            "method": label, "model": _model(r), "resolution": r.get("resolution", r["latent"] * 8), "mixed_precision": _precision(r),
            "seconds_per_step": r.get("seconds_per_step"), "cpu_seconds_per_step": r.get("cpu_seconds_per_step"),
            "peak_mem_mb": r.get("peak_mem_mb"),
            "reference_seconds_per_step": reference["seconds_per_step"] if compared else None,
            "reference_cpu_seconds_per_step": reference.get("cpu_seconds_per_step") if compared else None,
            "reference_peak_mem_mb": reference["peak_mem_mb"] if compared else None,
            "reference_teacher": reference.get("teacher", "copy") if compared else None,
            "ratio": ratio("seconds_per_step"), "cpu_ratio": ratio("cpu_seconds_per_step"),
            "ddim_steps": settings.get("ddim_steps"), "steps": r.get("steps"), "error": r.get("error"),
            "returncode": r.get("returncode"),
        })
    reuse = []
    for model in sorted({_model(r) for r in runs if r["kind"] == "reference-20"}):
        for latent in sorted({r["latent"] for r in runs if r["kind"] == "reference-20" and _model(r) == model}):
            same = lambda r: _model(r) == model and r["latent"] == latent and "error" not in r  # noqa: E731
            ref20 = [r for r in runs if r["kind"] == "reference-20" and same(r)]
            veil20 = [r for r in runs if r.get("tag") == "reuse" and same(r)]
            if not (ref20 and veil20):
                continue
            ref20, veil20 = ref20[-1], veil20[-1]
            row = {"model": model, "latent": latent, "resolution": ref20.get("resolution"), "ddim_steps": ref20["ddim_steps"],
                   "training_latents": 20,
                   "reference_seconds": ref20["seconds"], "reference_trajectory_calls": ref20["trajectory_calls"],
                   "veil_seconds": veil20["seconds"], "veil_steps": veil20["steps"],
                   "veil_trajectory_calls": veil20["trajectory_calls"], "ratio": round(veil20["seconds"] / ref20["seconds"], 3)}
            if "cpu_seconds" in ref20 and "cpu_seconds" in veil20:
                row.update(reference_cpu_seconds=ref20["cpu_seconds"], veil_cpu_seconds=veil20["cpu_seconds"],
                           cpu_ratio=round(veil20["cpu_seconds"] / ref20["cpu_seconds"], 3))
            reuse.append(row)
    return sorted(rows, key=lambda row: (row["model"], row["resolution"], row["method"])), reuse


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/sd-scale/cpu")
    parser.add_argument("--model", default="sd15-random", help="The per-step rows' model: sd15-random or sdxl-random "
                        "(or any name veil.load_pipeline takes).")
    parser.add_argument("--latents", default="32,64", help="Latent sides to measure (32: 256 px, 64: 512 px).")
    parser.add_argument("--methods", default=",".join(METHODS), help="Methods to measure ('' for none).")
    parser.add_argument("--steps", type=int, default=3, help="Training steps per measurement; a step's time is the "
                        "median of those after the first.")
    parser.add_argument("--ddim-steps", type=int, default=1, help="N of the per-step rows (every step samples to N − 1).")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16"),
                        help="Every row's precision: bf16 puts the frozen weights in bf16, veil's and the reference's alike.")
    parser.add_argument("--checkpointing", default="off,on", help="Gradient checkpointing of the ESD-x/reference pairs "
                        "('off,on', 'on' or 'off'); the other methods train with it on.")
    parser.add_argument("--no-reference", action="store_true", help="Skip the reference and the ESD-x pairs.")
    parser.add_argument("--reference-teacher", default="copy", choices=("copy", "swap"), help="The reference's teacher: "
                        "a frozen copy of the UNet (the authors'), or the trained tensors' originals swapped in (the same "
                        "computation, one UNet in memory: SDXL on a 24 GB machine).")
    parser.add_argument("--reuse-ddim-steps", type=int, default=50, help="N of the 20-iteration comparison (ESD's default).")
    parser.add_argument("--reuse-latent", type=int, default=0, help="Latent side of the 20-iteration comparison (0: skip it).")
    parser.add_argument("--reuse-model", default="sd15-random", help="Model of the 20-iteration comparison (any name "
                        "veil.load_pipeline takes, e.g. tiny).")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return

    os.makedirs(args.out, exist_ok=True)
    n, model, precision = args.ddim_steps, args.model, args.mixed_precision
    equal = {"ddim_steps": n, "samples_per_trajectory": n, "mixed_precision": precision}
    log_path = os.path.join(args.out, "runs.jsonl")
    with open(log_path, "a") as log:
        for latent in [int(x) for x in args.latents.split(",") if x]:
            common = {"model": model, "latent": latent, "steps": args.steps}
            pairs = [] if args.no_reference else [c == "on" for c in args.checkpointing.split(",") if c]
            for checkpointing in pairs:
                run({**common, "kind": "reference", "ddim_steps": n, "gradient_checkpointing": checkpointing,
                     "mixed_precision": precision, "teacher": args.reference_teacher}, log)
                run({**common, "kind": "method", "method": "esd-x", "settings": {**equal, "gradient_checkpointing": checkpointing}}, log)
            for name in [m for m in args.methods.split(",") if m]:
                if name == "esd-x" and True in pairs:
                    continue  # measured beside its reference
                settings = {} if name == "uce" else {**equal, "gradient_checkpointing": True}
                run({**common, "kind": "method", "method": name, "settings": settings}, log)
        if args.reuse_latent:
            m = args.reuse_ddim_steps
            common = {"model": args.reuse_model, "latent": args.reuse_latent}
            run({**common, "kind": "reference-20", "ddim_steps": m, "steps": 20}, log)
            run({**common, "kind": "method", "method": "esd-x", "steps": 5, "tag": "reuse",
                 "settings": {"ddim_steps": m, "samples_per_trajectory": 4}}, log)
    with open(log_path) as handle:
        runs = [json.loads(line) for line in handle if line.strip()]
    rows, reuse = summary(runs)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, one torch thread per process",
        "torch": torch.__version__,
        "equal_work": "ddim_steps = samples_per_trajectory = N (the rows' ddim_steps): each step samples the trajectory "
                      "to index N - 1 and trains on N latents, in veil and in the reference alike; the same gradient "
                      "checkpointing and precision on both sides",
        "timing": "seconds: wall clock; cpu_seconds: the process's CPU time (one thread), less sensitive to the other "
                  "jobs on this shared machine; ratio and cpu_ratio: veil's over the reference's",
        "rows": rows, "reuse_20_iterations": reuse,
        "bars": {"esd_x_step_ratio_max": 1.05, "reuse_20_ratio_max": 0.5,
                 "peak_mem_mb_max_512px": {"esd-x": 8192, "kpop": 8192, "dumo": 10240, "esd-full": 16384, "esd-u": 16384}},
    }
    path = os.path.join(args.out, "steps.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(path + ".tmp", path)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
