"""SDXL's extra UNet inputs, carried inside the prompt states.

SDXL's UNet reads, besides the token states, the pooled text embedding of the same prompt and six
"time ids" (original size, crop corner, target size) through ``added_cond_kwargs``. veil's methods
pass one tensor of prompt states through their training code (cached, concatenated, expanded), so
for an SDXL pipeline :func:`encode_packed` appends the pooled embedding to the token states as one
extra row, and a UNet pre-hook hands it back to the UNet as ``added_cond_kwargs`` (with the time ids
of an uncropped image of the latent's size, as the pipeline uses by default). A call that passes
``added_cond_kwargs`` itself — the pipeline's own — goes through untouched.
"""

import torch

from ..errors import VeilError

TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)


def is_sdxl(pipe):
    """Whether ``pipe``'s UNet takes SDXL's added text and time embeddings."""
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def pooled_width(unet):
    config = unet.config
    return config.projection_class_embeddings_input_dim - TIME_IDS * config.addition_time_embed_dim


def encode_packed(pipe, prompts):
    """``(n, tokens + 1, width)``: SDXL's token states of ``prompts`` with the pooled embedding as the last row."""
    states, _, pooled, _ = pipe.encode_prompt(
        list(prompts), device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return pack(pipe, states, pooled)


def pack(pipe, states, pooled):
    """``states`` ``(n, tokens, width)`` with ``pooled`` ``(n, p)`` appended as one zero-padded row."""
    width = states.shape[-1]
    if pooled.shape[-1] > width:
        raise VeilError(f"This SDXL model's pooled text embedding ({pooled.shape[-1]}) is wider than its token states ({width}).")
    row = states.new_zeros(states.shape[0], 1, width)
    row[:, 0, : pooled.shape[-1]] = pooled.to(states.dtype)
    install_unpacking(pipe)
    return torch.cat([states, row], dim=1)


def pipeline_inputs(pipe, states):
    """The pipeline call's keyword arguments for prompt states from :func:`veil.training.sampling.encode_prompts`."""
    if is_sdxl(pipe):
        return {"prompt_embeds": states[:, :-1], "pooled_prompt_embeds": states[:, -1, : pooled_width(pipe.unet)]}
    return {"prompt_embeds": states}


def token_states(pipe, states):
    """The token states alone: ``states`` without SDXL's pooled row (unchanged for other pipelines)."""
    return states[:, :-1] if is_sdxl(pipe) else states


def install_unpacking(pipe):
    """Put the pre-hook that unpacks :func:`encode_packed`'s states on ``pipe.unet`` (once)."""
    unet = pipe.unet
    if getattr(unet, "_veil_unpacking", None) is not None:
        return
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    pooled = pooled_width(unet)

    def unpack(module, args, kwargs):
        # A hook, because the UNet's conditioning travels through method code (caches, concatenation,
        # trajectories) as one tensor, and only the UNet call can split it again.
        if kwargs.get("added_cond_kwargs") is not None:
            return None
        in_args = len(args) > 2
        states = args[2] if in_args else kwargs.get("encoder_hidden_states")
        sample = args[0] if args else kwargs["sample"]
        if states is None:
            return None
        height, width = (int(s) * scale for s in sample.shape[-2:])
        time_ids = torch.tensor([height, width, 0, 0, height, width], device=states.device, dtype=states.dtype)
        added = {"text_embeds": states[:, -1, :pooled], "time_ids": time_ids.expand(states.shape[0], TIME_IDS)}
        tokens = states[:, :-1]
        if in_args:
            args = args[:2] + (tokens,) + args[3:]
        else:
            kwargs = dict(kwargs, encoder_hidden_states=tokens)
        return args, dict(kwargs, added_cond_kwargs=added)

    # prepend: runs before any method's own pre-hook (DuMo's), which then sees the plain token states.
    unet._veil_unpacking = unet.register_forward_pre_hook(unpack, with_kwargs=True, prepend=True)
