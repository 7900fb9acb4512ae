"""Reference SLD images computed once by diffusers' StableDiffusionPipelineSafe, for tests/test_reference_sld.py.

diffusers' safe pipeline is the SLD authors' implementation as diffusers ships it (deprecated, so it may leave
diffusers; the fixture keeps the check). It runs on the tiny pipeline with a CLIP text encoder, read without an
attention mask as SD's CLIP is: the safe pipeline encodes the safety concept without the mask even where the
text encoder asks for one, so only a mask-free encoder gives it and veil the same concept states.

Usage: see command.txt next to this file.
"""

import json
import os
import warnings

import diffusers
import torch
from safetensors.torch import save_file

from veil.methods.sld import PRESETS
from veil.models import build_tiny_pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {"concept": "a red circle", "prompts": ["a red circle on a plain background", "a blue square"],
            "num_inference_steps": 12, "guidance_scale": 7.5, "seed": 0, "max_warmup_steps": 3}


def safe_pipeline(pipe, concept):
    """diffusers' safe pipeline on ``pipe``'s components, guiding away from ``concept``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice
        safe = diffusers.StableDiffusionPipelineSafe(
            vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
            scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    safe.set_progress_bar_config(disable=True)
    safe.safety_concept = concept
    return safe


def preset_settings(preset):
    """The paper's preset, its warm-up cut to a quarter of the 12 steps so that the guidance acts on most."""
    values = dict(PRESETS[preset])
    values["warmup_steps"] = min(values["warmup_steps"], SETTINGS["max_warmup_steps"])
    return values


def main():
    torch.set_num_threads(1)
    safe = safe_pipeline(build_tiny_pipeline(seed=0, text_encoder="clip"), SETTINGS["concept"])
    images = {}
    for preset in ("none", *PRESETS):
        values = preset_settings(preset) if preset != "none" else {"sld_guidance_scale": 0.0}
        kwargs = {"sld_guidance_scale": values["sld_guidance_scale"]}
        if preset != "none":
            kwargs.update(sld_warmup_steps=values["warmup_steps"], sld_threshold=values["threshold"],
                          sld_momentum_scale=values["momentum_scale"], sld_mom_beta=values["momentum_beta"])
        generator = torch.Generator("cpu").manual_seed(SETTINGS["seed"])
        out = safe(SETTINGS["prompts"], num_inference_steps=SETTINGS["num_inference_steps"],
                   guidance_scale=SETTINGS["guidance_scale"], generator=generator, output_type="np", **kwargs)
        images[preset] = torch.from_numpy(out.images).contiguous()
    meta = dict(SETTINGS, diffusers_version=diffusers.__version__, pipeline="StableDiffusionPipelineSafe",
                model="tiny-clip", presets={p: preset_settings(p) for p in PRESETS})
    path = os.path.join(HERE, "safe-pipeline-tiny-clip.safetensors")
    save_file(images, path + ".tmp", metadata={"reference": json.dumps(meta, sort_keys=True)})
    os.replace(path + ".tmp", path)
    print(f"{path}: {sorted(images)}, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
