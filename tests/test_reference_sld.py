"""veil's SLD against diffusers' (deprecated) StableDiffusionPipelineSafe, the paper's maths as diffusers ships it.

Images made once by the safe pipeline are kept in bench/reference/sld/ (the pipeline may leave diffusers);
where it is still installed, the test also runs it live. Both use the tiny pipeline with a CLIP text encoder,
read without an attention mask as SD's CLIP is: the safe pipeline encodes the safety concept without the mask
even where the text encoder asks for one (the shapes world's does), so only a mask-free encoder gives both the
same concept states.
"""

import importlib.util
import json
import os

import pytest
import torch
from safetensors import safe_open

from veil.methods.sld import PRESETS, SLD
from veil.models import build_tiny_pipeline

FOLDER = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "reference", "sld")
REFERENCE = os.path.join(FOLDER, "safe-pipeline-tiny-clip.safetensors")
TOLERANCE = 1e-5  # relative: |veil - diffusers| / |diffusers| (Frobenius norms of the images)


@pytest.fixture(scope="module")
def reference():
    with safe_open(REFERENCE, framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, json.loads(handle.metadata()["reference"])


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(seed=0, text_encoder="clip")


def _script():
    """The script that made the stored images: the live check builds the safe pipeline the same way."""
    spec = importlib.util.spec_from_file_location("sld_make_reference", os.path.join(FOLDER, "make_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _relative_difference(ours, theirs):
    ours, theirs = torch.as_tensor(ours).double(), torch.as_tensor(theirs).double()
    return float((ours - theirs).norm() / theirs.norm())


def _generate(pipe, meta, **kwargs):
    generator = torch.Generator("cpu").manual_seed(meta["seed"])
    return torch.from_numpy(pipe(meta["prompts"], num_inference_steps=meta["num_inference_steps"],
                                 guidance_scale=meta["guidance_scale"], generator=generator, output_type="np",
                                 **kwargs).images)


def _veil_images(pipe, meta, preset):
    settings = meta["presets"][preset]
    method = SLD(concepts=[meta["concept"]], preset=preset, warmup_steps=settings["warmup_steps"])
    assert {k: getattr(method.config, k) for k in settings} == settings  # the paper's preset, its warm-up cut
    method.attach(pipe)
    try:
        return _generate(pipe, meta)
    finally:
        method.detach(pipe)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_sld_reproduces_the_safe_pipeline_images(pipe, reference, preset):
    images, meta = reference
    ours = _veil_images(pipe, meta, preset)
    # The guidance changes the images well beyond the tolerance (weak: 5.7e-4), so agreeing is about SLD itself.
    assert _relative_difference(images["none"], images[preset]) > 10 * TOLERANCE
    assert _relative_difference(ours, images[preset]) < TOLERANCE


@pytest.mark.parametrize("preset", ["medium", "max"])
def test_sld_matches_the_installed_safe_pipeline(pipe, reference, preset):
    diffusers = pytest.importorskip("diffusers")
    if not hasattr(diffusers, "StableDiffusionPipelineSafe"):
        pytest.skip("this diffusers no longer ships StableDiffusionPipelineSafe; the stored images still check SLD")
    _, meta = reference
    safe = _script().safe_pipeline(pipe, meta["concept"])
    settings = meta["presets"][preset]
    theirs = _generate(safe, meta, sld_guidance_scale=settings["sld_guidance_scale"],
                       sld_warmup_steps=settings["warmup_steps"], sld_threshold=settings["threshold"],
                       sld_momentum_scale=settings["momentum_scale"], sld_mom_beta=settings["momentum_beta"])
    assert _relative_difference(_veil_images(pipe, meta, preset), theirs) < TOLERANCE
