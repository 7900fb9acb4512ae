"""Architecture-true Stable Diffusion pipelines with random weights, built in code.

``sd15-random``, ``sd21-random`` and ``sdxl-random`` are the published configurations of Stable
Diffusion 1.5, 2.1 (v-prediction, 768 px) and SDXL base 1.0 (kept as JSON beside this file), with
randomly initialised weights and the real CLIP BPE tokenizer. They draw noise, not pictures: they
exist for tests, smoke runs and hardware benchmarks, where a model of the true shape and size is
needed but its weights are not. They save and load like any pipeline folder.

Each JSON also holds a ``reduced`` section: the same block layout at a small width, built in a
second, for tests.
"""

import json
import os

import torch

from ..errors import VeilError

ARCHITECTURES = {"sd15-random": "sd15", "sd21-random": "sd21", "sdxl-random": "sdxl"}
PIPELINE_KINDS = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}
_FOLDER = os.path.dirname(os.path.abspath(__file__))


def load_architecture(name):
    """The published configuration of ``name`` (``"sd15"``, ``"sd21"``, ``"sdxl"``) as a dict."""
    path = os.path.join(_FOLDER, f"{name}.json")
    if not os.path.isfile(path):
        raise VeilError(f"No architecture {name!r}; choose one of {', '.join(sorted(ARCHITECTURES.values()))}.")
    with open(path) as handle:
        return json.load(handle)


def component_configs(name, reduced=False):
    """``{component: config}`` of an architecture, the reduced-width overrides applied when ``reduced``."""
    architecture = load_architecture(name)
    components = {}
    for component, config in architecture.items():
        if isinstance(config, dict) and component not in ("reduced", "pipeline_config"):
            components[component] = dict(config, **(architecture["reduced"].get(component, {}) if reduced else {}))
    return architecture, components


def _text_encoder(config):
    import transformers

    config = dict(config)
    cls = getattr(transformers, config.pop("class"))
    return cls(transformers.CLIPTextConfig(**config))


def _scheduler(config):
    import diffusers

    config = dict(config)
    return getattr(diffusers, config.pop("class")).from_config(config)


def build_random_pipeline(name, reduced=False, seed=0, dtype=torch.float32):
    """A pipeline of architecture ``name`` with random weights (the same weights for the same seed).

    Args:
        name (`str`): ``"sd15"``, ``"sd21"`` or ``"sdxl"`` (or the model names ``"sd15-random"``, ...).
        reduced (`bool`): the same block layout at a small width, built in about a second (tests).
        seed (`int`): the weights' seed; the same seed gives the same weights and so the same fingerprint.
        dtype (`torch.dtype`): weight dtype.

    Returns:
        `StableDiffusionPipeline` or `StableDiffusionXLPipeline` that draws noise.

    Example:
        >>> pipe = build_random_pipeline("sd15", reduced=True)
        >>> pipe.save_pretrained("sd15-small")   # then --model sd15-small
    """
    import diffusers

    from .clip_tokenizer import clip_tokenizer

    name = ARCHITECTURES.get(name, name)
    architecture, configs = component_configs(name, reduced)
    components = {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        # Each component is cast as soon as it is built: a bf16 SDXL never holds all of its fp32 weights at once.
        # The random draws are the same whatever the dtype: the weights are the float32 build, cast.
        components["unet"] = diffusers.UNet2DConditionModel(**configs["unet"]).to(dtype)
        components["vae"] = diffusers.AutoencoderKL(**configs["vae"]).to(dtype)
        for component in ("text_encoder", "text_encoder_2"):
            if component in configs:
                components[component] = _text_encoder(configs[component]).to(dtype)
    for component in ("tokenizer", "tokenizer_2"):
        if component in configs:
            components[component] = clip_tokenizer(**configs[component])
    components["scheduler"] = _scheduler(configs["scheduler"])
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # as from_pretrained leaves them
    pipeline_class = getattr(diffusers, architecture["pipeline"])
    if pipeline_class is diffusers.StableDiffusionPipeline:
        components.update(safety_checker=None, feature_extractor=None)
    pipe = pipeline_class(**components, **architecture.get("pipeline_config", {}))
    pipe.set_progress_bar_config(disable=True)
    return pipe
