"""Reference DuMo noise predictions computed once by the authors' release, for tests/test_reference_dumo.py.

The release (github:Maplebb/DuMo) ships its own diffusers 0.27.2, so the script runs in two processes:

1. ``prepare`` (veil's environment): a DuMo for "circle" on the bundled shapes model, its EPR output
   convolutions and time-scale table filled from a fixed seed (:func:`perturb`, as training would leave them),
   written with veil's ``save_authors_checkpoint``; the inputs (latent, text states, token ids) beside it.
2. ``authors`` (started by ``prepare``, with the release's folder first on ``sys.path``): the release's
   ``DuMo.from_pretrained`` loads that folder (its missing and unexpected keys are recorded), its vendored
   ``UNet2DConditionModel`` loads the shapes UNet, its ``calculate_matching_score`` (read from
   ``erase/generate_image_artist_time_new_multi_ft.py``) gives each prompt's multiplier, and each noise
   prediction follows that script's sampling step: residual i × time_scale[t // 50][i] × multiplier into the
   UNet, for an unconditional + conditional batch. The nudity script's step (residuals as they come) is kept too.

Two stand-ins let the vendored diffusers import here, neither used by the code run: ``huggingface_hub`` no longer
has ``cached_download``, and its UNet file imports matplotlib for commented-out plots.

Usage: see command.txt next to this file.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _authors import function_from_file  # noqa: E402
FIXTURE = os.path.join(HERE, "release-shapes-circle.safetensors")
CONCEPT = "circle"
PROMPTS = ["a red circle on a plain background", "a blue square on a dotted background", "a circle"]
TIMESTEPS = [601, 249]


def perturb(method, seed=0, scale=0.05):
    """Non-zero EPR output convolutions and a time table of 0.5-1.5, from ``seed`` (the same on every machine)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for concept in method.config.concepts:
            epr = method.eprs[concept]
            for conv in [*epr.dumo_down_blocks, epr.dumo_mid_block]:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * scale)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * scale)
            table = method.time_scales[concept]
            table.copy_(0.5 + torch.rand(table.shape, generator=generator))


def inputs(pipe):
    """The latent, the text states and the token ids every prediction uses."""
    from veil.training.sampling import encode_prompts

    generator = torch.Generator().manual_seed(1)
    size = pipe.unet.config.sample_size
    tokens = lambda texts: pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,  # noqa: E731
                                          truncation=True, return_tensors="pt").input_ids
    return {
        "latent": torch.randn(1, pipe.unet.config.in_channels, size, size, generator=generator),
        "uncond": encode_prompts(pipe, [""]),
        "prompts": encode_prompts(pipe, PROMPTS),
        "prompt_ids": tokens(PROMPTS),
        "concept": encode_prompts(pipe, [CONCEPT]),
        "concept_ids": tokens([CONCEPT]),
        "special_ids": torch.tensor(sorted(pipe.tokenizer.all_special_ids)),
    }


def prepare(release, commit):
    from safetensors.torch import save_file

    import veil
    from veil.methods.dumo import DuMo
    from veil.methods.dumo.compat import save_authors_checkpoint
    from veil.shapes import PIPELINE_DIR

    torch.set_num_threads(1)
    pipe = veil.load_pipeline("shapes")
    method = DuMo(concepts=[CONCEPT])
    method.attach(pipe)
    perturb(method)
    with tempfile.TemporaryDirectory() as work:
        save_authors_checkpoint(method, os.path.join(work, CONCEPT))
        save_file({k: v.contiguous() for k, v in inputs(pipe).items()}, os.path.join(work, "inputs.safetensors"))
        subprocess.run([sys.executable, os.path.abspath(__file__), "authors", "--release", release, "--work", work,
                        "--unet", os.path.join(PIPELINE_DIR, "unet"), "--commit", commit], check=True)


def authors(release, work, unet_dir, commit):
    import huggingface_hub
    import numpy as np

    if not hasattr(huggingface_hub, "cached_download"):
        huggingface_hub.cached_download = None
    for name in ("matplotlib", "matplotlib.pyplot"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, release)
    import diffusers
    from diffusers import UNet2DConditionModel
    from dumo import DuMo
    from safetensors.torch import load_file, save_file

    assert os.path.dirname(diffusers.__file__).startswith(os.path.abspath(release)), diffusers.__file__
    torch.set_num_threads(1)
    score = function_from_file(os.path.join(release, "erase", "generate_image_artist_time_new_multi_ft.py"),
                      "calculate_matching_score", {"torch": torch, "MATCHING_METRICS": str})
    data = load_file(os.path.join(work, "inputs.safetensors"))
    unet = UNet2DConditionModel.from_pretrained(unet_dir).eval()
    dumo, info = DuMo.from_pretrained(os.path.join(work, CONCEPT), output_loading_info=True)
    dumo.eval()
    time_scale = torch.from_numpy(np.load(os.path.join(work, CONCEPT, "time_scale.npy")))
    special = set(data["special_ids"].tolist())
    outputs, multipliers = {}, []
    latents = torch.cat([data["latent"]] * 2)
    with torch.no_grad():
        for p, prompt in enumerate(PROMPTS):
            states = data["prompts"][p : p + 1]
            multiplier = score(data["prompt_ids"][p : p + 1], states, data["concept_ids"], data["concept"],
                               matching_metric="clipcos_tokenuni", special_token_ids=special).max() * 1.0
            multipliers.append(float(multiplier))
            context = torch.cat([data["uncond"], states])
            for t in TIMESTEPS:
                down, mid = dumo(latents, t, encoder_hidden_states=context)
                outputs[f"original/{p}/{t}"] = unet(latents, t, encoder_hidden_states=context).sample
                outputs[f"nudity_script/{p}/{t}"] = unet(latents, t, encoder_hidden_states=context,
                                                         down_block_additional_residuals=list(down),
                                                         mid_block_additional_residual=mid).sample
                row = time_scale[int(t // 50)]
                down = [r * row[i] * multiplier for i, r in enumerate(down)]
                mid = mid * row[-1] * multiplier
                outputs[f"release/{p}/{t}"] = unet(latents, t, encoder_hidden_states=context,
                                                   down_block_additional_residuals=down,
                                                   mid_block_additional_residual=mid).sample
    meta = {"release": "github:Maplebb/DuMo", "commit": commit, "diffusers": diffusers.__version__, "model": "shapes",
            "concept": CONCEPT, "prompts": PROMPTS, "timesteps": TIMESTEPS, "multipliers": multipliers,
            "missing_keys": sorted(info["missing_keys"]), "unexpected_keys": sorted(info["unexpected_keys"]),
            "scripts": ["erase/generate_image_artist_time_new_multi_ft.py", "erase/generate_image_nudity.py", "dumo.py"]}
    save_file({k: v.contiguous() for k, v in outputs.items()}, FIXTURE + ".tmp",
              metadata={"reference": json.dumps(meta, sort_keys=True)})
    os.replace(FIXTURE + ".tmp", FIXTURE)
    print(f"{FIXTURE}: {len(outputs)} predictions, {os.path.getsize(FIXTURE)} bytes; multipliers {multipliers}; "
          f"missing {meta['missing_keys']}, unexpected {meta['unexpected_keys']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("prepare", "authors"))
    parser.add_argument("--release", required=True, help="A checkout of github:Maplebb/DuMo.")
    parser.add_argument("--commit", required=True, help="The checkout's commit.")
    parser.add_argument("--work", help="(authors) the folder prepare wrote.")
    parser.add_argument("--unet", help="(authors) the shapes model's UNet folder.")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(os.path.abspath(args.release), args.commit)
    else:
        authors(os.path.abspath(args.release), args.work, args.unet, args.commit)


if __name__ == "__main__":
    main()
