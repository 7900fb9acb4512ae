"""Rebuild a shapes world from scratch (seeded):

    data -> VAE -> latent cache (+ VAE round-trips) -> classifier -> caption-embedding cache
         -> UNet (EMA) -> pipeline folder + classifier -> fidelity check, paraphrase CSV, samples.

    python -m veil.shapes.train --out src/veil/shapes/weights [--world 1] [--seed 0] [--unet-minutes 33]
                                [--vae-minutes 7] [--workdir .shapes_build] [--resume]
    python -m veil.shapes.train --world 2 --out .shapes_world2 --workdir .shapes_world2_build --resume

Finished stages found in ``--workdir`` are skipped; the VAE, classifier and UNet checkpoint
themselves every few minutes to the workdir and ``--resume`` continues from those checkpoints.
World 1 trains each network for a wall-clock budget; world 2 for a fixed number of steps.
Run with HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from veil.shapes import MAX_LENGTH, load_shapes_pipeline, load_text_encoder, load_tokenizer, silence_type_warning
from veil.shapes import data as W
from veil.shapes import world2, world2_build
from veil.shapes.classifier import ShapesClassifier, accuracy, augment, load_classifier, save_classifier, world_heads

KINDS = W.KINDS
WORLDS = {1: W, 2: world2}

# ----------------------------------------------------------------------------- configs
VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=32,
    sample_size=32,
)
UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(64, 128, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    # NB: diffusers' legacy ``attention_head_dim`` of UNet2DConditionModel is the number of heads:
    # 4 heads of 32 dims at 128 channels (32 heads of 4 dims is ~10x slower at inference on CPU).
    cross_attention_dim=384, attention_head_dim=4, norm_num_groups=32,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)
# World 2's UNet: the same design, wider in the two attention stages (12 shapes x 5 styles, objects).
UNET2_CONFIG = dict(UNET_CONFIG, block_out_channels=(64, 160, 160), attention_head_dim=5)
# caption mixture used in UNet training (the rest are full captions)
P_EMPTY, P_CS, P_SB, P_S = (W.CAPTION_SHARES[k] for k in ("empty", "cs", "sb", "s"))
# Per-world defaults of the arguments left unset. World 1 trains for wall-clock budgets; world 2 for fixed step
# counts (planned to fit 90 minutes on 2 idle cores; docs/shapes-world.md), its minutes only a safety stop.
WORLD_DEFAULTS = {
    1: dict(n_train=30000, n_val=3000, n_roundtrip=10000, vae_minutes=7.0, vae_steps=10 ** 9, clf_minutes=4.0,
            clf_steps=700, captions_per_combo=64, unet_minutes=33.0, unet_steps=10 ** 9, eval_seeds=2,
            para_per_phrasing=12),
    2: dict(n_train=60000, n_val=3000, n_roundtrip=12000, vae_minutes=None, vae_steps=2000, clf_minutes=None,
            clf_steps=1500, captions_per_combo=8, unet_minutes=None, unet_steps=9000, eval_seeds=2,
            para_per_phrasing=4),
}


def limit_seconds(minutes):
    """A stage's wall-clock limit in seconds; None: no limit (the stage runs its steps)."""
    return math.inf if minutes is None else minutes * 60
EVAL_STEPS, EVAL_CFG = 25, 3.0
PARAPHRASE_KEEP = 0.70


def log(msg: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}")
    sys.stdout.flush()


def to_model(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N,32,32,3] -> float [N,3,32,32] in [-1,1]."""
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_u8(x: torch.Tensor) -> np.ndarray:
    """float [N,3,32,32] in [-1,1] -> uint8 [N,32,32,3]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def timed_lr(base: float, frac: float, warm: float, decay_from: float = 0.6, floor: float = 0.1) -> float:
    """Warm-up, constant, then cosine decay to ``floor * base`` over the last part of the budget."""
    lr = base * min(1.0, warm)
    if frac > decay_from:
        p = min(1.0, (frac - decay_from) / (1 - decay_from))
        lr = base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))) * min(1.0, warm)
    return lr


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_cache(path: Path):
    """A cache or checkpoint written by :func:`atomic_save`: tensors, numbers, strings and containers only
    (``weights_only``; a pickle that would run code is refused)."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:  # pickle.UnpicklingError and friends: say what to do, in one sentence
        from veil.errors import VeilError

        raise VeilError(f"{path} is not a cache this veil can read safely ({type(error).__name__}); delete it and "
                        "run again to rebuild it.") from None


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))


def world_of(args):
    """The data module of the build's shapes-world version."""
    return WORLDS[args.world]


class Checkpoint:
    """A training stage's state in the workdir: saved every ``minutes`` and at the end of the stage's loop,
    loaded by ``--resume``. The state records the stage's settings; resuming under other settings is refused."""

    def __init__(self, path: Path, minutes: float, settings: dict):
        self.path, self.every, self.settings = path, minutes * 60, json.loads(json.dumps(settings, default=str))
        self.last = time.time()

    def load(self, resume: bool):
        """The saved state, or None (no ``--resume``, or nothing saved yet)."""
        if not (resume and self.path.exists()):
            return None
        state = load_cache(self.path)
        if state.get("settings") != self.settings:
            from veil.errors import VeilError

            raise VeilError(f"{self.path} was saved with other settings than this run's; run with the settings it "
                            "was started with, or delete it to start that stage again.")
        return state

    def due(self) -> bool:
        """Whether ``minutes`` have passed since the last save."""
        return time.time() - self.last >= self.every

    def save(self, state: dict) -> None:
        atomic_save({**state, "settings": self.settings}, self.path)
        self.last = time.time()


def check_workdir(args, wd: Path) -> None:
    """Refuse a workdir that holds another build (another world or seed): its caches would be mixed in."""
    f = wd / "build.json"
    mine = {"world": args.world, "seed": args.seed, "n_train": args.n_train, "n_val": args.n_val}
    if f.exists():
        theirs = json.loads(f.read_text())
        if theirs != mine:
            from veil.errors import VeilError

            raise VeilError(f"The workdir {wd} holds another build ({theirs}); pass another --workdir for {mine}.")
    elif any(wd.iterdir()) and args.world != 1:
        from veil.errors import VeilError

        raise VeilError(f"The workdir {wd} is not empty and records no build; pass an empty or new --workdir.")
    write_json(f, mine)


# ----------------------------------------------------------------------------- stage 1: data
def stage_data(args, wd: Path, rec: dict):
    f = wd / "data.npz"
    if f.exists():
        log("data: cached")
        d = np.load(f)
        done = wd / "data_done.json"
        rec["data"] = {"cached": True, "n_train": int(d["xtr"].shape[0]), "n_val": int(d["xva"].shape[0]),
                       **(json.loads(done.read_text()) if done.exists() else {})}
        return d["xtr"], d["ytr"], d["xva"], d["yva"]
    t0 = time.time()
    world = world_of(args)
    xtr, ytr = world.make_dataset(args.n_train, seed=args.seed * 1000 + 1)
    xva, yva = world.make_dataset(args.n_val, seed=args.seed * 1000 + 2)
    np.savez(f, xtr=xtr, ytr=ytr, xva=xva, yva=yva)
    rec["data"] = {"seconds": round(time.time() - t0, 1), "n_train": args.n_train, "n_val": args.n_val}
    write_json(wd / "data_done.json", rec["data"])
    log(f"data: {args.n_train}+{args.n_val} images in {time.time() - t0:.1f}s")
    return xtr, ytr, xva, yva


# ----------------------------------------------------------------------------- stage 2: VAE
@torch.no_grad()
def vae_val_mse(vae, x: torch.Tensor, bs: int = 500) -> float:
    vae.eval()
    tot = 0.0
    for i in range(0, x.shape[0], bs):
        xb = x[i:i + bs]
        rec = vae.decode(vae.encode(xb).latent_dist.mean).sample
        tot += F.mse_loss(rec, xb, reduction="sum").item()
    vae.train()
    return tot / x.numel()


def stage_vae(args, wd: Path, rec: dict, xtr, xva):
    from diffusers import AutoencoderKL

    out = wd / "vae"
    done = wd / "vae_done.json"
    if done.exists():
        log("vae: cached")
        rec["vae"] = {"cached": True, **json.loads(done.read_text())}
        return AutoencoderKL.from_pretrained(out).eval()
    torch.manual_seed(args.seed * 1000 + 11)
    gen = torch.Generator().manual_seed(args.seed * 1000 + 12)
    vae = AutoencoderKL(**VAE_CONFIG)
    nparams = sum(p.numel() for p in vae.parameters())
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    xt = to_model(xtr)
    xv = to_model(xva[:512])
    limit = limit_seconds(args.vae_minutes)
    ck = Checkpoint(wd / "vae_ckpt.pt", args.ckpt_minutes,
                    {"world": args.world, "seed": args.seed, "config": VAE_CONFIG, "batch": args.vae_batch,
                     "lr": args.vae_lr, "kl": args.vae_kl, "steps": args.vae_steps, "minutes": args.vae_minutes})
    step, elapsed, hist, run = 0, 0.0, [], []
    state = ck.load(args.resume)
    if state:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed, hist = state["step"], state["elapsed"], state["hist"]
        log(f"vae: resumed from step {step} ({elapsed:.0f}s trained)")
    t0 = time.time() - elapsed
    pbar = tqdm(total=args.vae_steps if args.vae_steps < 10 ** 8 else None, initial=step, desc="vae", mininterval=10,
                file=sys.stdout)
    vae.train()
    tuner = ThreadTuner(args.threads, first_probe=step + 20, stage="vae")
    while step < args.vae_steps and time.time() - t0 < limit:
        t_step = time.time()
        frac = max((time.time() - t0) / limit, step / args.vae_steps)
        lr = timed_lr(args.vae_lr, frac, warm=(step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, xt.shape[0], (args.vae_batch,), generator=gen)
        xb = xt[idx]
        post = vae.encode(xb).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, xb)
        kl = post.kl().mean()
        loss = mse + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        run.append(mse.item())
        pbar.update(1)
        tuner.record(step, time.time() - t_step)
        if step % 100 == 0:
            v = vae_val_mse(vae, xv)
            hist.append({"step": step, "seconds": round(time.time() - t0, 1), "train_mse": float(np.mean(run)),
                         "val_mse": v, "lr": lr})
            run = []
            log(f"vae step {step} {time.time() - t0:.0f}s train_mse {hist[-1]['train_mse']:.4f} val_mse {v:.4f}")
        if ck.due():
            ck.save({"model": vae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "step": step, "elapsed": time.time() - t0, "hist": hist})
            log(f"vae: checkpoint at step {step}")
    pbar.close()
    train_s = time.time() - t0
    vae.eval()
    with torch.no_grad():
        zs = []
        for i in range(0, min(4000, xt.shape[0]), 500):
            post = vae.encode(xt[i:i + 500]).latent_dist
            zs.append(post.mean + post.std * torch.randn(post.mean.shape, generator=gen))
        std = torch.cat(zs).std().item()
    sf = 1.0 / std
    vae.register_to_config(scaling_factor=sf)
    val = vae_val_mse(vae, to_model(xva[:1000]))
    vae.save_pretrained(out, safe_serialization=True)
    info = {"seconds": round(time.time() - t0, 1), "train_seconds": round(train_s, 1), "steps": step,
            "val_mse": val, "psnr_01": 10 * math.log10(4.0 / val) if val > 0 else None,
            "latent_std": std, "scaling_factor": sf, "params": nparams, "history": hist,
            "config": {**VAE_CONFIG, "batch": args.vae_batch, "lr": args.vae_lr, "kl_weight": args.vae_kl}}
    write_json(done, info)
    rec["vae"] = info
    log(f"vae: {step} steps in {train_s:.0f}s, val mse {val:.4f}, latent std {std:.3f} -> sf {sf:.3f}")
    return vae


# ----------------------------------------------------------------------------- stage 3: latents
def stage_latents(args, wd: Path, rec: dict, vae, xtr, xva):
    f = wd / "latents.pt"
    info_f = wd / "latents_done.json"
    if f.exists():
        log("latents: cached")
        rec["latents"] = {"cached": True, **(json.loads(info_f.read_text()) if info_f.exists() else {})}
        # Tensors only (weights_only: a cache is not trusted to run code); the round-trip images back to numpy.
        lat = load_cache(f)
        return {k: v.numpy() if k.startswith("rt_") else v for k, v in lat.items()}
    t0 = time.time()
    gen = torch.Generator().manual_seed(args.seed * 1000 + 21)
    mus, stds = [], []
    xt = to_model(xtr)
    with torch.no_grad():
        for i in tqdm(range(0, xt.shape[0], 500), desc="encode", mininterval=10, file=sys.stdout):
            post = vae.encode(xt[i:i + 500]).latent_dist
            mus.append(post.mean.clone())
            stds.append(post.std.clone())
        mu, sd = torch.cat(mus), torch.cat(stds)
        t_enc = time.time() - t0
        # VAE round-trips (sampled latents, as the diffusion model sees them) for the classifier
        n_rt = min(args.n_roundtrip, xt.shape[0])
        rt_tr = []
        for i in range(0, n_rt, 500):
            z = mu[i:i + 500] + sd[i:i + 500] * torch.randn(mu[i:i + 500].shape, generator=gen)
            rt_tr.append(to_u8(vae.decode(z).sample))
        xv = to_model(xva)
        rt_va = []
        for i in range(0, xv.shape[0], 500):
            post = vae.encode(xv[i:i + 500]).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rt_va.append(to_u8(vae.decode(z).sample))
    lat = {"mu": mu, "std": sd, "rt_train": np.concatenate(rt_tr), "rt_val": np.concatenate(rt_va)}
    atomic_save({k: torch.from_numpy(v) if k.startswith("rt_") else v for k, v in lat.items()}, f)
    rec["latents"] = {"seconds": round(time.time() - t0, 1), "encode_seconds": round(t_enc, 1),
                      "n_roundtrip_train": n_rt}
    write_json(info_f, rec["latents"])
    log(f"latents: encoded {mu.shape[0]} in {t_enc:.0f}s; round-trips in {time.time() - t0 - t_enc:.0f}s")
    return lat


# ----------------------------------------------------------------------------- stage 4: classifier
def train_classifier(args, heads: Dict[str, Sequence[str]], sources, ck: "Checkpoint" = None) -> tuple:
    """Train a :class:`ShapesClassifier` with ``heads`` for ``args.clf_steps`` (or ``args.clf_minutes``).

    ``sources``: (uint8 images [N,3,32,32], int64 labels [N, heads]) pairs; each batch draws equally from
    each, with blur/noise/brightness augmentation. ``ck`` resumes and checkpoints the loop.
    Returns the model (eval mode) and its training record (steps, seconds, loss history)."""
    torch.manual_seed(args.seed * 1000 + 31)
    gen = torch.Generator().manual_seed(args.seed * 1000 + 32)
    model = ShapesClassifier(heads=heads)
    opt = torch.optim.AdamW(model.parameters(), lr=args.clf_lr, weight_decay=1e-4)
    kinds = list(model.labels)
    limit = limit_seconds(args.clf_minutes)
    sizes = [args.clf_batch // len(sources)] * len(sources)
    sizes[-1] += args.clf_batch - sum(sizes)
    step, elapsed, hist, run = 0, 0.0, [], []
    state = ck.load(args.resume) if ck else None
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, elapsed, hist = state["step"], state["elapsed"], state["hist"]
        log(f"classifier: resumed from step {step}")
    t0 = time.time() - elapsed
    model.train()
    pbar = tqdm(total=args.clf_steps, initial=step, desc="classifier", mininterval=10, file=sys.stdout)
    tuner = ThreadTuner(args.threads, first_probe=step + 20, stage="classifier")
    while step < args.clf_steps and time.time() - t0 < limit:
        t_step = time.time()
        frac = max(step / args.clf_steps, (time.time() - t0) / limit)
        lr = args.clf_lr * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        picks = [torch.randint(0, x.shape[0], (n,), generator=gen) for (x, _), n in zip(sources, sizes)]
        xb = torch.cat([x[i] for (x, _), i in zip(sources, picks)]).float() / 255.0
        yb = torch.cat([y[i] for (_, y), i in zip(sources, picks)])
        xb = augment(xb, gen)
        out = model(xb)
        loss = sum(F.cross_entropy(out[k], yb[:, j]) for j, k in enumerate(kinds))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        run.append(loss.item())
        pbar.update(1)
        tuner.record(step, time.time() - t_step)
        if step % 100 == 0:
            hist.append({"step": step, "seconds": round(time.time() - t0, 1), "loss": float(np.mean(run))})
            run = []
            log(f"classifier step {step} loss {hist[-1]['loss']:.4f}")
        if ck and ck.due():
            ck.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step,
                     "elapsed": time.time() - t0, "hist": hist})
    pbar.close()
    model.eval()
    return model, {"seconds": round(time.time() - t0, 1), "steps": step, "history": hist,
                   "params": sum(p.numel() for p in model.parameters())}


def stage_classifier(args, wd: Path, rec: dict, xtr, ytr, xva, yva, lat):
    f = wd / "classifier.safetensors"
    done = wd / "classifier_done.json"
    if done.exists():
        log("classifier: cached")
        rec["classifier"] = {"cached": True, **json.loads(done.read_text())}
        return load_classifier(f)
    t0 = time.time()
    heads = world_heads(args.world)
    rt = lat["rt_train"]
    sources = [(torch.from_numpy(xtr).permute(0, 3, 1, 2), torch.from_numpy(ytr)),
               (torch.from_numpy(rt).permute(0, 3, 1, 2), torch.from_numpy(ytr[:rt.shape[0]]))]
    ck = Checkpoint(wd / "classifier_ckpt.pt", args.ckpt_minutes,
                    {"world": args.world, "seed": args.seed, "batch": args.clf_batch, "lr": args.clf_lr,
                     "steps": args.clf_steps, "minutes": args.clf_minutes})
    model, trained = train_classifier(args, heads, sources, ck)
    acc_clean = accuracy(model, xva, yva)
    acc_rt = accuracy(model, lat["rt_val"], yva)
    ok = all(v >= 0.99 for v in acc_clean.values()) and all(v >= 0.97 for v in acc_rt.values())
    info = {"seconds": round(time.time() - t0, 1), "steps": trained["steps"], "val_clean": acc_clean,
            "val_vae_roundtrip": acc_rt, "meets_bar": ok, "history": trained["history"],
            "config": {"batch": args.clf_batch, "lr": args.clf_lr, "widths": list(model.widths),
                       "params": trained["params"]}}
    save_classifier(model, f, extra={"val_clean": acc_clean, "val_vae_roundtrip": acc_rt,
                                     "seed": args.seed, "steps": trained["steps"]})
    write_json(done, info)
    rec["classifier"] = info
    log(f"classifier: {trained['steps']} steps {time.time() - t0:.0f}s; clean {acc_clean}; vae round-trip {acc_rt}"
        + ("" if ok else "  ** BELOW BAR **"))
    return load_classifier(f)


# ----------------------------------------------------------------------------- stage 5: captions
def build_caption_table(seed: int, k_full: int):
    """All training captions and index tables into them."""
    rng = np.random.default_rng(seed)
    texts: List[str] = []
    index: Dict[str, int] = {}

    def add(t: str) -> int:
        if t not in index:
            index[t] = len(texts)
            texts.append(t)
        return index[t]

    S, C, B = W.SHAPES, W.COLOURS, W.BACKGROUNDS
    syn = {k: v["train"] for k, v in W.SYNONYMS.items()}
    empty = add("")
    full = np.zeros((len(S), len(C), len(B), k_full), dtype=np.int64)
    for si, s in enumerate(S):
        for ci, c in enumerate(C):
            for bi, b in enumerate(B):
                ids = [add(W.fill(t, s=s, c=c, b=b)) for t in W.TRAIN_TEMPLATES]  # canonical words
                seen = set(ids)
                tries = 0
                while len(ids) < k_full and tries < 100 * k_full:
                    tries += 1
                    t = W.TRAIN_TEMPLATES[int(rng.integers(len(W.TRAIN_TEMPLATES)))]
                    j = add(W.fill(t, s=W._pick(syn[s], rng), c=W._pick(syn[c], rng), b=W._pick(syn[b], rng)))
                    if j not in seen:
                        seen.add(j)
                        ids.append(j)
                while len(ids) < k_full:
                    ids.append(ids[len(ids) % len(W.TRAIN_TEMPLATES)])
                full[si, ci, bi] = ids[:k_full]
    ns = len(syn[S[0]])
    cs = np.array([[[add(W.fill(W.PARTIAL_TEMPLATES["cs"], s=ws, c=wc)) for ws in syn[s] for wc in syn[c]]
                    for c in C] for s in S])
    sb = np.array([[[add(W.fill(W.PARTIAL_TEMPLATES["sb"], s=ws, b=wb)) for ws in syn[s] for wb in syn[b]]
                    for b in B] for s in S])
    so = np.array([[add(W.fill(W.PARTIAL_TEMPLATES["s"], s=ws)) for ws in syn[s]] for s in S])
    assert so.shape[1] == ns
    return texts, {"empty": empty, "full": torch.from_numpy(full), "cs": torch.from_numpy(cs),
                   "sb": torch.from_numpy(sb), "s": torch.from_numpy(so)}


@torch.no_grad()
def encode_texts(texts: Sequence[str], tokenizer, te, bs: int = 256) -> torch.Tensor:
    """Exactly what StableDiffusionPipeline.encode_prompt does (max_length padding, mask, [0])."""
    out = []
    for i in tqdm(range(0, len(texts), bs), desc="captions", mininterval=10, file=sys.stdout):
        tok = tokenizer(list(texts[i:i + bs]), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt")
        mask = tok.attention_mask if getattr(te.config, "use_attention_mask", False) else None
        out.append(te(tok.input_ids, attention_mask=mask)[0].to(torch.float16))
    return torch.cat(out)


def stage_captions(args, wd: Path, rec: dict):
    f = wd / "captions.pt"
    info_f = wd / "captions_done.json"
    if f.exists():
        log("captions: cached")
        rec["captions"] = {"cached": True, **(json.loads(info_f.read_text()) if info_f.exists() else {})}
        return load_cache(f)
    t0 = time.time()
    if args.world == 1:
        texts, idx = build_caption_table(args.seed * 1000 + 41, args.captions_per_combo)
    else:
        texts, idx = world2_build.caption_table(args.seed * 1000 + 41, args.captions_per_combo,
                                                max(1, args.captions_per_combo // 2))
    tok = load_tokenizer()
    te = load_text_encoder()
    lens = [len(tok(t).input_ids) for t in texts]
    emb = encode_texts(texts, tok, te)
    cap = {"texts": texts, "idx": idx, "emb": emb}
    atomic_save(cap, f)
    rec["captions"] = {"seconds": round(time.time() - t0, 1), "n_captions": len(texts),
                       "max_tokens": max(lens), "shape": list(emb.shape)}
    write_json(info_f, rec["captions"])
    log(f"captions: {len(texts)} encoded in {time.time() - t0:.0f}s (max {max(lens)} tokens)")
    return cap


# ----------------------------------------------------------------------------- stage 6: UNet
def unet_config(world: int) -> dict:
    return UNET_CONFIG if world == 1 else UNET2_CONFIG


def caption_mix(world: int) -> dict:
    """The share of each kind of training caption (the rest are full captions)."""
    if world == 1:
        return {"empty": P_EMPTY, "colour+shape": P_CS, "shape+background": P_SB, "shape": P_S}
    return {**world2.CAPTION_SHARES, "shape named by a training object": world2.OBJECT_SHARE}


def sample_caption_ids(labels: torch.Tensor, idx: dict, gen: torch.Generator) -> torch.Tensor:
    B = labels.shape[0]
    s, c, b = labels[:, 0], labels[:, 1], labels[:, 2]
    u = torch.rand(B, generator=gen)
    kf = idx["full"].shape[-1]
    ids = idx["full"][s, c, b, torch.randint(0, kf, (B,), generator=gen)]
    ids_cs = idx["cs"][s, c, torch.randint(0, idx["cs"].shape[-1], (B,), generator=gen)]
    ids_sb = idx["sb"][s, b, torch.randint(0, idx["sb"].shape[-1], (B,), generator=gen)]
    ids_s = idx["s"][s, torch.randint(0, idx["s"].shape[-1], (B,), generator=gen)]
    ids = torch.where(u < P_EMPTY + P_CS + P_SB + P_S, ids_s, ids)
    ids = torch.where(u < P_EMPTY + P_CS + P_SB, ids_sb, ids)
    ids = torch.where(u < P_EMPTY + P_CS, ids_cs, ids)
    ids = torch.where(u < P_EMPTY, torch.full_like(ids, idx["empty"]), ids)
    return ids


class ThreadTuner:
    """Every ``every`` steps, run ``n`` steps with the other thread count; keep the faster one."""

    def __init__(self, max_threads: int, first_probe: int, every: int = 250, n: int = 12, stage: str = "unet"):
        self.options = sorted({1, max(1, max_threads)})
        self.cur = max(1, max_threads)
        self.every, self.n, self.next_probe = every, n, first_probe
        self.dts: List[float] = []
        self.probing, self.base, self.probe_start = False, 0.0, 0
        self.switches: List[dict] = []
        self.stage = stage
        torch.set_num_threads(self.cur)

    def record(self, step: int, dt: float) -> None:
        self.dts.append(dt)
        if len(self.options) < 2:
            return
        if not self.probing and step >= self.next_probe and len(self.dts) >= self.n:
            self.base = float(np.median(self.dts[-self.n:]))
            alt = [o for o in self.options if o != self.cur][0]
            torch.set_num_threads(alt)
            self.probing, self.probe_start = True, step
        elif self.probing and step - self.probe_start >= self.n:
            probe = float(np.median(self.dts[-self.n:]))
            alt = torch.get_num_threads()
            if probe < self.base:
                self.cur = alt
            torch.set_num_threads(self.cur)
            self.switches.append({"step": step, "threads": self.cur, "s_per_step": min(probe, self.base)})
            log(f"{self.stage} threads: {alt} -> {probe:.2f}s/step vs {self.base:.2f}s/step; using {self.cur}")
            self.probing = False
            self.next_probe = step + self.every
            self.dts = []


def stage_unet(args, wd: Path, rec: dict, ytr, lat, cap, sf: float):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    out = wd / "unet_ema"
    done = wd / "unet_done.json"
    if done.exists():
        log("unet: cached")
        rec["unet"] = {"cached": True, **json.loads(done.read_text())}
        return UNet2DConditionModel.from_pretrained(out).eval()
    torch.manual_seed(args.seed * 1000 + 51)
    gen = torch.Generator().manual_seed(args.seed * 1000 + 52)
    config = unet_config(args.world)
    sample_ids = sample_caption_ids if args.world == 1 else world2_build.sample_caption_ids
    unet = UNet2DConditionModel(**config)
    ema = UNet2DConditionModel(**config)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    nparams = sum(p.numel() for p in unet.parameters())
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                             if k not in ("set_alpha_to_one", "steps_offset")})
    opt = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=1e-2)
    step, elapsed_before, hist = 0, 0.0, []
    ck = Checkpoint(wd / "unet_ckpt.pt", args.ckpt_minutes,
                    {"world": args.world, "seed": args.seed, "config": config, "batch": args.unet_batch,
                     "lr": args.unet_lr, "warmup": args.unet_warmup, "decay_from": args.unet_decay_from,
                     "ema": args.ema, "steps": args.unet_steps, "minutes": args.unet_minutes})
    st = ck.load(args.resume)
    if st:
        unet.load_state_dict(st["unet"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        step, elapsed_before, hist = st["step"], st["elapsed"], st["hist"]
        log(f"unet: resumed from step {step} ({elapsed_before:.0f}s trained)")
    mu, sd = lat["mu"], lat["std"]
    labels = torch.from_numpy(ytr)
    emb, idx = cap["emb"], cap["idx"]
    alphas = sched.alphas_cumprod
    limit = limit_seconds(args.unet_minutes)
    ema_params = list(ema.parameters())
    params = list(unet.parameters())
    t0 = time.time() - elapsed_before
    run = []
    unet.train()
    pbar = tqdm(total=args.unet_steps if args.unet_steps < 10 ** 8 else None, initial=step, desc="unet",
                mininterval=30, file=sys.stdout)
    # Adaptive thread count: with another process busy on a 2-core box, 2 OpenMP threads can be
    # several times slower than 1; probe the alternative every few hundred steps, keep the faster.
    tuner = ThreadTuner(args.threads, first_probe=step + 20)
    while step < args.unet_steps and time.time() - t0 < limit:
        t_step = time.time()
        frac = max((time.time() - t0) / limit, step / args.unet_steps)
        lr = timed_lr(args.unet_lr, frac, warm=(step + 1) / args.unet_warmup, decay_from=args.unet_decay_from)
        for g in opt.param_groups:
            g["lr"] = lr
        bi = torch.randint(0, mu.shape[0], (args.unet_batch,), generator=gen)
        z0 = (mu[bi] + sd[bi] * torch.randn(mu[bi].shape, generator=gen)) * sf
        ids = sample_ids(labels[bi], idx, gen)
        ctx = emb[ids].float()
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.unet_batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = unet(zt, t, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        run.append(loss.item())
        pbar.update(1)
        tuner.record(step, time.time() - t_step)
        if step % 100 == 0:
            hist.append({"step": step, "seconds": round(time.time() - t0, 1), "loss": float(np.mean(run)),
                         "lr": lr, "threads": torch.get_num_threads()})
            run = []
            log(f"unet step {step} {time.time() - t0:.0f}s loss {hist[-1]['loss']:.4f} lr {lr:.2e}")
        if ck.due():
            ck.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
                     "elapsed": time.time() - t0, "hist": hist})
            log(f"unet: checkpoint at step {step}")
    pbar.close()
    train_s = time.time() - t0
    ema.eval()
    ema.save_pretrained(out, safe_serialization=True)
    info = {"seconds": round(train_s, 1), "steps": step, "s_per_step": round(train_s / max(step, 1), 3),
            "final_loss": hist[-1]["loss"] if hist else (float(np.mean(run)) if run else None),
            "params": nparams, "history": hist, "thread_choices": tuner.switches,
            "config": {**config, "batch": args.unet_batch, "lr": args.unet_lr, "warmup": args.unet_warmup,
                       "lr_decay_from": args.unet_decay_from, "weight_decay": 1e-2, "grad_clip": 1.0,
                       "ema": args.ema, "caption_mix": caption_mix(args.world),
                       "prediction": "epsilon", "minutes_limit": args.unet_minutes, "steps_planned": args.unet_steps}}
    write_json(done, info)
    rec["unet"] = info
    log(f"unet: {step} steps in {train_s:.0f}s, final loss {info['final_loss']}")
    return ema


# ----------------------------------------------------------------------------- stage 7: save
def stage_save(args, out: Path, rec: dict, vae, unet, wd: Path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    silence_type_warning()
    t0 = time.time()
    pdir = out / "pipeline"
    if pdir.exists():
        shutil.rmtree(pdir)
    tok = load_tokenizer()
    te = load_text_encoder()
    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(vae=vae.to(torch.float16), text_encoder=te, tokenizer=tok,
                                   unet=unet.to(torch.float16), scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(pdir, safe_serialization=True)
    shutil.rmtree(pdir / "text_encoder", ignore_errors=True)
    vae.to(torch.float32)
    unet.to(torch.float32)
    shutil.copy(wd / "classifier.safetensors", out / "classifier.safetensors")
    shutil.copy(wd / "classifier.json", out / "classifier.json")
    write_json(out / "world.json", {"version": args.world, "seed": args.seed})
    size = sum(p.stat().st_size for p in pdir.rglob("*") if p.is_file())
    rec["save"] = {"seconds": round(time.time() - t0, 1), "pipeline_bytes": size}
    log(f"saved pipeline to {pdir} ({size / 1e6:.1f} MB)")


# ----------------------------------------------------------------------------- stage 8: evaluation
@torch.no_grad()
def generate(pipe, rows: Sequence[dict], steps: int = EVAL_STEPS, cfg: float = EVAL_CFG, bs: int = 120,
             desc: str = "sample") -> np.ndarray:
    imgs = []
    for i in tqdm(range(0, len(rows), bs), desc=desc, mininterval=30, file=sys.stdout):
        chunk = rows[i:i + bs]
        gens = [torch.Generator().manual_seed(int(r["seed"])) for r in chunk]
        res = pipe([r["prompt"] for r in chunk], num_inference_steps=steps, guidance_scale=cfg,
                   generator=gens, output_type="np")
        imgs.append(np.clip(np.round(res.images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(imgs) if imgs else np.zeros((0, 32, 32, 3), np.uint8)


def score(rows: Sequence[dict], pred: Dict[str, List[str]], kinds: Sequence[str] = KINDS) -> dict:
    """Per-head accuracy over rows naming that head, all-named accuracy, per-concept rates."""
    res: dict = {"n": len(rows)}
    all_ok = []
    per_concept: Dict[str, List[bool]] = {}
    for i, r in enumerate(rows):
        ok_all = True
        for k in kinds:
            if r.get(k):
                ok = pred[k][i] == r[k]
                per_concept.setdefault(r[k], []).append(ok)
                ok_all &= ok
        all_ok.append(ok_all)
    for k in kinds:
        vals = [pred[k][i] == r[k] for i, r in enumerate(rows) if r.get(k)]
        res[k] = float(np.mean(vals)) if vals else None
    res["all_named"] = float(np.mean(all_ok)) if all_ok else None
    res["per_concept"] = {c: float(np.mean(v)) for c, v in per_concept.items()}
    return res


def fmt(res: dict, world=W) -> str:
    pc = res["per_concept"]
    parts = [f"{k} {100 * res[k]:.1f}%" for k in world.KINDS if res.get(k) is not None]
    parts.append(f"all {100 * res['all_named']:.1f}%")
    conc = " ".join(f"{c}:{100 * pc[c]:.0f}" for k in world.KINDS for c in world.AXES[k] if c in pc)
    return " | ".join(parts) + "\n    " + conc


def save_grid(images: np.ndarray, path: Path, row_names: Sequence[str], col_names: Sequence[str],
              col_notes: Sequence[str] = ()) -> None:
    """Images (row-major, len(row_names) x len(col_names)) as a labelled grid PNG."""
    from PIL import Image, ImageDraw

    cell, pad_l, pad_t = 96, 80, 36
    canvas = Image.new("RGB", (pad_l + cell * len(col_names), pad_t + cell * len(row_names)), "white")
    d = ImageDraw.Draw(canvas)
    for ci, c in enumerate(col_names):
        d.text((pad_l + ci * cell + 6, 4), c, fill="black")
        if col_notes:
            d.text((pad_l + ci * cell + 6, 18), col_notes[ci], fill="grey")
    for ri, r in enumerate(row_names):
        d.text((6, pad_t + ri * cell + cell // 2 - 6), r, fill="black")
        for ci in range(len(col_names)):
            im = Image.fromarray(images[ri * len(col_names) + ci]).resize((cell - 4, cell - 4), Image.NEAREST)
            canvas.paste(im, (pad_l + ci * cell + 2, pad_t + ri * cell + 2))
    canvas.save(path)


def sample_grid(pipe, path: Path, seed: int = 0) -> None:
    rows = []
    for s in W.SHAPES:
        for ci, c in enumerate(W.COLOURS):
            b = W.BACKGROUNDS[ci % len(W.BACKGROUNDS)]
            rows.append({"prompt": W.canonical_prompt(s, c, b), "seed": seed})
    imgs = generate(pipe, rows, desc="grid")
    save_grid(imgs, path, W.SHAPES, W.COLOURS, [W.BACKGROUNDS[i % len(W.BACKGROUNDS)] for i in range(len(W.COLOURS))])


def eval_sets(pipe, clf, sets: Dict[str, List[dict]], world, ev: dict) -> None:
    """Generate and score each named prompt set into ``ev``."""
    from veil.shapes.classifier import classify

    for name, rows in sets.items():
        ts = time.time()
        imgs = generate(pipe, rows, desc=name)
        res = score(rows, classify(imgs, clf), world.KINDS)
        res["seconds"] = round(time.time() - ts, 1)
        ev[name] = res
        log(f"fidelity {name} ({len(rows)} images, {res['seconds']}s): {fmt(res, world)}")


def eval_paraphrases(pipe, clf, world, n_per_phrasing: int, csv_path: Path, ev: dict) -> None:
    """Rate every held-out phrasing on the clean model; write those at or above ``PARAPHRASE_KEEP`` (all
    named concepts drawn) to ``csv_path``: the ``shapes_paraphrase`` prompt set."""
    from veil.shapes.classifier import classify

    ts = time.time()
    kinds = world.KINDS
    phr = world.paraphrase_phrasings()
    all_rows, owner = [], []
    for j, ph in enumerate(phr):
        rs = world.phrasing_prompts(ph, n_per_phrasing)
        all_rows.extend(rs)
        owner.extend([j] * len(rs))
    imgs = generate(pipe, all_rows, desc="paraphrase")
    pred = classify(imgs, clf)
    owner = np.array(owner)
    table, kept_rows = [], []
    for j, ph in enumerate(phr):
        sel = np.nonzero(owner == j)[0]
        rows = [all_rows[i] for i in sel]
        r = score(rows, {k: [pred[k][i] for i in sel] for k in kinds}, kinds)
        concept_rate = r["per_concept"].get(ph["concept"]) if ph["concept"] else r["all_named"]
        keep = r["all_named"] >= PARAPHRASE_KEEP
        table.append({"id": ph["id"], "kind": ph["kind"], "concept": ph["concept"], "synonym": ph["synonym"],
                      "template": ph["template"], "example": rows[0]["prompt"], "n": len(rows),
                      "concept_rate": concept_rate, "all_named": r["all_named"], "kept": keep})
        if keep:
            kept_rows.extend(rows)
    para_all = score(all_rows, pred, kinds)
    para_kept = score(kept_rows, {k: [pred[k][i] for i, r in enumerate(all_rows)
                                      if table[owner[i]]["kept"]] for k in kinds}, kinds) if kept_rows else None
    ev["paraphrase_candidates"] = {**para_all, "seconds": round(time.time() - ts, 1)}
    ev["paraphrase_kept"] = para_kept
    ev["paraphrase_phrasings"] = table
    ev["paraphrase_n_phrasings"] = {"candidates": len(phr), "kept": int(sum(t["kept"] for t in table))}
    log(f"paraphrase candidates ({len(all_rows)} images): {fmt(para_all, world)}")
    log(f"paraphrase phrasings kept (>= {PARAPHRASE_KEEP:.0%} all-named correct): "
        f"{ev['paraphrase_n_phrasings']['kept']}/{len(phr)}")
    for t in table:
        log(f"   {'KEEP' if t['kept'] else 'drop'} {t['all_named']:.2f} {t['example']}")
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "seed", *kinds])
        for r in kept_rows:
            w.writerow([r["prompt"], r["seed"], *(r[k] or "" for k in kinds)])


def stage_eval(args, out: Path, rec: dict):
    t0 = time.time()
    pipe = load_shapes_pipeline(path=out / "pipeline")
    assert pipe.tokenizer.model_max_length == MAX_LENGTH and pipe.text_encoder.config.use_attention_mask
    clf = load_classifier(out / "classifier.safetensors")
    world = world_of(args)
    ev: dict = {"sampler": {"scheduler": "DDIM", "steps": EVAL_STEPS, "guidance_scale": EVAL_CFG}}
    seeds = list(range(args.eval_seeds))
    if args.world == 1:
        sets = {"canonical": W.canonical_prompts(seeds), "train_synonyms": W.training_synonym_prompts(seeds)}
    else:
        sets = world2_build.eval_sets(seeds)
    eval_sets(pipe, clf, sets, world, ev)
    eval_paraphrases(pipe, clf, world, args.para_per_phrasing, out / "paraphrase_prompts.csv", ev)
    if args.world == 1:
        sample_grid(pipe, out / "samples.png")
    else:
        ev["bars"] = world2_build.bars(ev)
        log(f"bars: {ev['bars']}")
        grid, row_names, col_names = world2_build.grid_rows()
        save_grid(generate(pipe, grid, desc="grid"), out / "samples.png", row_names, col_names)
    ev["seconds"] = round(time.time() - t0, 1)
    rec["eval"] = ev


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m veil.shapes.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="src/veil/shapes/weights")
    p.add_argument("--workdir", default=".shapes_build")
    p.add_argument("--world", type=int, choices=(1, 2), default=1, help="the shapes-world version to build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the VAE, classifier and UNet from their workdir checkpoints")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-val", type=int)
    p.add_argument("--n-roundtrip", type=int)
    p.add_argument("--vae-minutes", type=float)
    p.add_argument("--vae-steps", type=int)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--clf-minutes", type=float)
    p.add_argument("--clf-steps", type=int)
    p.add_argument("--clf-batch", type=int, default=128)
    p.add_argument("--clf-lr", type=float, default=2e-3)
    p.add_argument("--captions-per-combo", type=int)
    p.add_argument("--unet-minutes", type=float)
    p.add_argument("--unet-steps", type=int)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--unet-lr", type=float, default=5e-4)
    p.add_argument("--unet-warmup", type=int, default=300)
    p.add_argument("--unet-decay-from", type=float, default=0.6)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--eval-seeds", type=int)
    p.add_argument("--para-per-phrasing", type=int)
    p.add_argument("--no-eval", action="store_true")
    args = p.parse_args(argv)
    for k, v in WORLD_DEFAULTS[args.world].items():  # what was not given: the world's defaults
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    silence_type_warning()
    wd, out = Path(args.workdir), Path(args.out)
    wd.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    check_workdir(args, wd)
    T0 = time.time()
    rec: dict = {"args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "versions": {"torch": torch.__version__}, "stages": {}}
    try:
        import diffusers
        import transformers
        rec["versions"].update(diffusers=diffusers.__version__, transformers=transformers.__version__)
    except Exception:  # pragma: no cover
        pass
    st = rec["stages"]

    def checkpoint_log():
        rec["total_seconds"] = round(time.time() - T0, 1)
        write_json(out / "train_log.json", rec)

    xtr, ytr, xva, yva = stage_data(args, wd, st)
    vae = stage_vae(args, wd, st, xtr, xva)
    checkpoint_log()
    lat = stage_latents(args, wd, st, vae, xtr, xva)
    stage_classifier(args, wd, st, xtr, ytr, xva, yva, lat)
    checkpoint_log()
    cap = stage_captions(args, wd, st)
    unet = stage_unet(args, wd, st, ytr, lat, cap, float(vae.config.scaling_factor))
    checkpoint_log()
    stage_save(args, out, st, vae, unet, wd)
    checkpoint_log()
    if not args.no_eval:
        stage_eval(args, out, st)
    rec["total_seconds"] = round(time.time() - T0, 1)
    # over every run of the build (a resumed build's earlier runs included): what a rebuild from scratch costs
    rec["build_seconds"] = round(sum(v.get("seconds", 0.0) for v in st.values() if isinstance(v, dict)), 1)
    rec["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json(out / "train_log.json", rec)
    log(f"done in {rec['total_seconds']:.0f}s (all runs of the build: {rec['build_seconds']:.0f}s); "
        f"log at {out / 'train_log.json'}")
    return rec


if __name__ == "__main__":
    main()
