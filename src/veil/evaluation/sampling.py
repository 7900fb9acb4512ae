"""Seeded, batched image generation through a stock pipeline call."""

import torch
from tqdm.auto import tqdm


def warn_if_truncated(pipe, prompts, warn=print, what="prompt"):
    """Tell the user, once per prompt (or concept), when the tokenizer will cut it (as diffusers does)."""
    limit = pipe.tokenizer.model_max_length
    for prompt in dict.fromkeys(prompts):
        length = len(pipe.tokenizer(prompt, truncation=False).input_ids)
        if length > limit:
            warn(f"warning: the {what} {prompt[:40]!r}... is {length} tokens; the text encoder reads the first {limit} and ignores the rest.")


@torch.no_grad()
def generate(pipe, prompts, seeds, *, num_inference_steps=25, guidance_scale=3.0, batch_size=32, progress=False, negative_prompt=None,
             resolution=None):
    """One image per (prompt, seed) pair, in order; each image depends only on its own seed; ``resolution``: the
    images' side in pixels (``None``: the model's own).

    Returns:
        `list[PIL.Image.Image]`.
    """
    assert len(prompts) == len(seeds)
    images = []
    bar = tqdm(total=len(prompts), desc="generate", unit="img", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        out = pipe(
            chunk,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
            height=resolution,
            width=resolution,
        )
        images.extend(out.images)
        bar.update(len(chunk))
    bar.close()
    return images
