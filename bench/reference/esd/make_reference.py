"""ESD reference outputs from the authors' released diffusers script, for tests/test_reference_esd.py.

Runs the authors' ``esd_sd.py`` (github.com/rohitgandikota/erasing, given by --authors: a folder holding
``esd_sd.py`` and ``utils/sd_utils.py``; nothing of it is copied here) for one iteration on veil's tiny random
SD-architecture pipeline (``build_tiny_pipeline(seed=0)``), once per variant, and writes what that iteration
produced: the loss, every trained parameter's gradient norm and edited weight norm, and whole tensors (gradients and
edited weights) for esd-x and for the time embedding, input and output convolutions of esd-u. The script is run
unchanged; only what it loads is swapped:

* its hub loads return the tiny pipeline in float64 (the script asks for bfloat16 on a GPU). float64 makes the
  fixture the same on every CPU: in float32 the smallest gradients move by ~3e-5 relative from one CPU (or BLAS
  build) to another, more than the 1e-5 the test allows;
* its fixed 1024 px height is an 8 x 8 latent (the tiny UNet's size) through the pipeline's ``vae_scale_factor``;
* the pipeline's scheduler is the DDIM one it ships (veil's trajectories are DDIM on the model's schedule);
* Python's ``random`` is seeded (--seed), which fixes the script's DDIM index and noise seed; both are recorded.

Example:
    git clone https://github.com/rohitgandikota/erasing /tmp/erasing   # commit 25613d2
    python bench/reference/esd/make_reference.py --authors /tmp/erasing --commit 25613d27892326e0c7770f7f3555bea4be150089 \\
        --out bench/reference/esd
"""

import argparse
import json
import os
import random
import runpy
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

from veil._io import atomic_dir
from veil.models import build_tiny_pipeline

VARIANTS = {"esd-x": "xattn", "esd-u": "noxattn"}  # the authors' name -> veil's train_method
WHOLE_ESD_U = ("time_embedding.linear_1.", "time_embedding.linear_2.", "conv_in.", "conv_out.")
LATENT = 8  # the tiny UNet's sample size
CONCEPT = "circle"


def run_authors(authors, variant, seed, workdir):
    """One iteration of the authors' script; returns (loss, {name: grad}, {name: edited weight}, draws)."""
    import diffusers

    pipe = build_tiny_pipeline(seed=0).to(torch.float64)
    pipe.vae_scale_factor = 1024 // LATENT
    state = {name: tensor.clone() for name, tensor in pipe.unet.state_dict().items()}
    recorded = {"loss": [], "grads": {}, "draws": []}

    class Float64UNet(diffusers.UNet2DConditionModel):
        def to(self, *args, **kwargs):  # keep float64 where the script asks for bfloat16
            return super().to(*[a for a in args if not isinstance(a, torch.dtype)])

    def unet_from_pretrained(*args, **kwargs):
        unet = Float64UNet.from_config(pipe.unet.config).double()
        unet.load_state_dict(state)
        return unet.eval()

    def pipe_from_pretrained(*args, unet=None, **kwargs):
        pipe.unet = unet
        return pipe

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            for group in self.param_groups:
                for param in group["params"]:
                    recorded["grads"][id(param)] = param.grad.detach().clone()
            return super().step(closure)

    class RecordingMSE(torch.nn.MSELoss):
        def forward(self, prediction, target):
            loss = super().forward(prediction, target)
            recorded["loss"].append(float(loss))
            return loss

    real_randint = random.randint

    def recording_randint(low, high):
        value = real_randint(low, high)
        recorded["draws"].append(value)
        return value

    saved = (diffusers.UNet2DConditionModel.from_pretrained, diffusers.StableDiffusionPipeline.from_pretrained,
             torch.optim.Adam, torch.nn.MSELoss, random.randint, list(sys.argv), list(sys.path))
    diffusers.UNet2DConditionModel.from_pretrained = unet_from_pretrained
    diffusers.StableDiffusionPipeline.from_pretrained = pipe_from_pretrained
    torch.optim.Adam, torch.nn.MSELoss, random.randint = RecordingAdam, RecordingMSE, recording_randint
    sys.path.insert(0, authors)
    sys.argv = ["esd_sd.py", "--erase_concept", CONCEPT, "--train_method", variant, "--iterations", "1",
                "--device", "cpu", "--save_path", workdir]
    random.seed(seed)
    try:
        namespace = runpy.run_path(os.path.join(authors, "esd_sd.py"), run_name="__main__")
    finally:
        (diffusers.UNet2DConditionModel.from_pretrained, diffusers.StableDiffusionPipeline.from_pretrained,
         torch.optim.Adam, torch.nn.MSELoss, random.randint, sys.argv, sys.path) = saved
        for name in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]:
            del sys.modules[name]  # the authors' top-level "utils" package
    names, params = namespace["esd_param_names"], namespace["esd_params"]
    grads = {name: recorded["grads"][id(param)] for name, param in zip(names, params)}
    edited = load_file(os.path.join(workdir, f"esd-{CONCEPT}-from-{CONCEPT}-{variant.replace('-', '')}.safetensors"))
    return recorded["loss"], grads, edited, recorded["draws"], namespace


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors", required=True, help="Folder of the authors' code (esd_sd.py, utils/sd_utils.py).")
    parser.add_argument("--commit", required=True, help="The authors' commit the folder holds (recorded).")
    parser.add_argument("--seed", type=int, default=3, help="Seed of Python's random: the DDIM index and noise seed.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    authors = os.path.abspath(args.authors)
    if not os.path.isfile(os.path.join(authors, "esd_sd.py")):
        sys.exit(f"{authors!r} holds no esd_sd.py; give the folder of a checkout of rohitgandikota/erasing.")
    tensors, record = {}, {"authors_repository": "https://github.com/rohitgandikota/erasing", "authors_commit": args.commit,
                           "authors_script": "esd_sd.py", "model": "veil.models.build_tiny_pipeline(seed=0)", "dtype": "float64",
                           "concept": CONCEPT, "python_random_seed": args.seed, "variants": {}}
    for variant, train_method in VARIANTS.items():
        with tempfile.TemporaryDirectory() as workdir:
            losses, grads, edited, draws, namespace = run_authors(authors, variant, args.seed, workdir)
        t_enc, noise_seed = draws
        whole = [n for n in grads if variant == "esd-x" or n.startswith(WHOLE_ESD_U)]
        for name in whole:
            tensors[f"{variant}.grad.{name}"] = grads[name].contiguous()
            tensors[f"{variant}.edited.{name}"] = edited[name].contiguous()
        record["variants"][variant] = {
            "train_method": train_method,
            "loss": losses[0],
            "t_enc": t_enc,
            "noise_seed": noise_seed,
            "timestep": int(namespace["pipe"].scheduler.timesteps[t_enc]),
            "negative_guidance": namespace["negative_guidance"],
            "guidance_scale": namespace["guidance_scale"],
            "num_inference_steps": namespace["num_inference_steps"],
            "lr": namespace["lr"],
            "parameters": sorted(grads),
            "grad_norms": {n: float(g.double().norm()) for n, g in sorted(grads.items())},
            "edited_norms": {n: float(edited[n].double().norm()) for n in sorted(grads)},
            "whole_tensors": sorted(whole),
        }
    os.makedirs(args.out, exist_ok=True)
    with atomic_dir(os.path.join(args.out, "fixture"), overwrite=True) as tmp:
        save_file(tensors, os.path.join(tmp, "tensors.safetensors"))
        with open(os.path.join(tmp, "reference.json"), "w") as handle:
            json.dump(record, handle, indent=1, sort_keys=True)
            handle.write("\n")
    print(json.dumps({v: {k: r[k] for k in ("loss", "t_enc", "noise_seed", "timestep")} for v, r in record["variants"].items()}))


if __name__ == "__main__":
    main()
