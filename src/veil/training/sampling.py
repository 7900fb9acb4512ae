"""ESD sampling and guidance helpers shared by ESD, KPOP and DuMo (METHODS.md, "ESD sampling").

One partial DDIM trajectory from pure noise serves several ``t_enc`` at once: the latents at each
requested step index are stored on the way, so a batch of ``k`` training samples costs one
trajectory to the deepest index instead of ``k`` trajectories.
"""

import torch


@torch.no_grad()
def encode_prompts(pipe, prompts):
    """Text-encoder states for ``prompts`` exactly as the pipeline computes them: ``(n, tokens, width)``."""
    prompt_embeds, _ = pipe.encode_prompt(
        list(prompts), device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return prompt_embeds


def guided_noise_pred(unet, latents, timestep, cond, uncond, guidance_scale):
    """Classifier-free guidance: ``eps(∅) + s·(eps(c) − eps(∅))`` with one batched UNet call."""
    batch = latents.shape[0]
    model_input = torch.cat([latents, latents])
    context = torch.cat([uncond.expand(batch, -1, -1), cond.expand(batch, -1, -1)])
    noise_uncond, noise_cond = unet(model_input, timestep, encoder_hidden_states=context).sample.chunk(2)
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


@torch.no_grad()
def sample_partial_trajectory(pipe, cond, uncond, t_encs, *, num_inference_steps=50, guidance_scale=3.0, generator=None):
    """Run DDIM from noise with the *current* model and keep the latents at step indices ``t_encs``.

    Args:
        cond, uncond: text states ``(1, tokens, width)`` of the concept and of the empty prompt.
        t_encs: step indices in ``[0, num_inference_steps)``; index ``i`` is the latent after ``i``
            denoising steps (``0`` is the starting noise).

    Returns:
        `torch.Tensor` of shape ``(len(t_encs), channels, h, w)``, in the order of ``t_encs``.
    """
    unet, scheduler = pipe.unet, pipe.scheduler
    scheduler = scheduler.__class__.from_config(scheduler.config)  # never disturb the pipeline's own state
    scheduler.set_timesteps(num_inference_steps, device=pipe.device)
    size = unet.config.sample_size
    latents = torch.randn(
        (1, unet.config.in_channels, size, size), generator=generator, device="cpu", dtype=torch.float32
    ).to(pipe.device, unet.dtype)
    latents = latents * scheduler.init_noise_sigma
    wanted = sorted(set(int(i) for i in t_encs))
    kept = {}
    for index, timestep in enumerate(scheduler.timesteps):
        if index in wanted:
            kept[index] = latents
        if index >= wanted[-1]:
            break
        model_input = scheduler.scale_model_input(latents, timestep)
        noise_pred = guided_noise_pred(unet, model_input, timestep, cond, uncond, guidance_scale)
        latents = scheduler.step(noise_pred, timestep, latents).prev_sample
    return torch.cat([kept[int(i)] for i in t_encs])


def training_timesteps(t_encs, num_inference_steps, generator, num_train_timesteps=1000, mapping="esd"):
    """Map DDIM step indices to training timesteps.

    ``mapping="esd"`` is ESD's published rule ``t ~ U[T·t_enc/N, T·(t_enc+1)/N)`` (METHODS.md). It
    pairs the latent after ``t_enc`` denoising steps (noise level near ``T·(1 − t_enc/N)``) with a
    timestep near ``T·t_enc/N``. ``mapping="aligned"`` instead draws ``t`` from the interval the
    latent's own noise level lies in: ``t ~ U[T·(N−1−t_enc)/N, T·(N−t_enc)/N)``.
    """
    if mapping == "aligned":
        t_encs = [num_inference_steps - 1 - int(t) for t in t_encs]
    elif mapping != "esd":
        raise ValueError(f"Unknown timestep mapping {mapping!r}; use 'esd' or 'aligned'.")
    lows = [round(num_train_timesteps * t / num_inference_steps) for t in t_encs]
    highs = [round(num_train_timesteps * (t + 1) / num_inference_steps) for t in t_encs]
    return torch.tensor(
        [int(torch.randint(lo, max(hi, lo + 1), (1,), generator=generator)) for lo, hi in zip(lows, highs)],
        dtype=torch.long,
    )


def negative_guidance_target(noise_uncond, noise_cond, negative_guidance=1.0):
    """ESD's target ``eps*(x_t,t,∅) − eta·(eps*(x_t,t,c) − eps*(x_t,t,∅))``."""
    return noise_uncond - negative_guidance * (noise_cond - noise_uncond)
