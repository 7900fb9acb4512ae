"""ESD sampling and guidance helpers shared by ESD, KPOP and DuMo (docs/methods/esd.md, "ESD sampling").

One partial DDIM trajectory from pure noise serves several ``t_enc`` at once: the latents at each
requested step index are stored on the way, so a batch of ``k`` training samples costs one
trajectory to the deepest index instead of ``k`` trajectories.
"""

import contextlib
import itertools

import torch
from diffusers import DDIMScheduler

from ..architectures.sdxl import encode_packed, is_sdxl


@torch.no_grad()
def encode_prompts(pipe, prompts):
    """Text-encoder states for ``prompts`` exactly as the pipeline computes them: ``(n, tokens, width)``.

    On SDXL the pooled text embedding rides along as one more row, which the UNet call unpacks
    (:mod:`veil.architectures.sdxl`); :func:`veil.architectures.sdxl.token_states` drops it.
    """
    if is_sdxl(pipe):
        return encode_packed(pipe, prompts)
    prompt_embeds, _ = pipe.encode_prompt(
        list(prompts), device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return prompt_embeds


def encode_guidance_prompts(pipe, prompts):
    """:func:`encode_prompts`, the empty prompt standing for guidance's unconditional input as the pipeline samples
    it without a negative prompt: zeros (token states and pooled embedding) on an SDXL pipeline whose config sets
    ``force_zeros_for_empty_prompt`` (SDXL base's does), the empty prompt encoded elsewhere."""
    states = encode_prompts(pipe, prompts)
    if is_sdxl(pipe) and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        states[[i for i, prompt in enumerate(prompts) if prompt == ""]] = 0
    return states


class PromptCache:
    """Text states of single prompts, each encoded once: training steps come back to the same few prompts. The empty
    prompt is guidance's unconditional input (:func:`encode_guidance_prompts`)."""

    def __init__(self):
        self._states = {}

    def __call__(self, pipe, text):
        """``(1, tokens, width)`` states of ``text``, as :func:`encode_guidance_prompts` computes them."""
        if text not in self._states:
            self._states[text] = encode_guidance_prompts(pipe, [text])
        return self._states[text]

    def prefetch(self, pipe, texts, batch_size=128):
        """Encode the ``texts`` not cached yet, ``batch_size`` at a time: on a CPU a prompt in a batch of 128 costs
        about a quarter of one encoded alone (the shapes world's text encoder: 7.7 against 30 ms)."""
        todo = sorted(set(texts) - set(self._states))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for text, states in zip(chunk, encode_guidance_prompts(pipe, chunk)):
                self._states[text] = states[None]


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
    return sample_partial_trajectories(
        pipe, cond, uncond, [t_encs], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        generator=generator,
    )[0]


def ddim_scheduler(pipe, num_inference_steps):
    """A DDIM scheduler on the pipeline's own noise schedule, set to ``num_inference_steps``.

    ESD sampling runs DDIM whatever sampler the pipeline ships (a stock SD 1.5 folder ships PNDM, whose
    steps are not DDIM's): the betas, timestep spacing, offset and prediction type come from the
    pipeline's scheduler config; the predicted clean latent is clipped only where that config asks for it.
    The pipeline's own scheduler is left untouched.
    """
    config = dict(pipe.scheduler.config)
    scheduler = DDIMScheduler.from_config(config, clip_sample=bool(config.get("clip_sample", False)))
    scheduler.set_timesteps(num_inference_steps, device=pipe.device)
    return scheduler


def trajectory_timesteps(pipe, t_encs, num_inference_steps):
    """The noise level of each latent :func:`sample_partial_trajectories` keeps: the DDIM timestep of step index
    ``t_enc`` (the timestep the next step would denoise from), so a latent is trained at its own noise level.

    Index 0 is the starting noise, at the schedule's first timestep; after ``i`` steps DDIM has reached its ``i``-th
    timestep (``timesteps[i - 1]`` minus the step size). Returns a ``torch.long`` tensor in the order of ``t_encs``.
    """
    scheduler = ddim_scheduler(pipe, num_inference_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    levels = [timesteps[0]] + [t - stride for t in timesteps[:-1]]
    return torch.tensor([levels[int(i)] for i in t_encs], dtype=torch.long, device=pipe.device)


@torch.no_grad()
def sample_partial_trajectories(
    pipe, conds, uncond, t_encs, *, num_inference_steps=50, guidance_scale=3.0, generator=None, sample_size=None
):
    """Several partial DDIM trajectories in one batched run: trajectory ``i`` follows ``conds[i]`` and keeps
    the latents at its own step indices ``t_encs[i]``. Its starting noise is drawn in order, so one
    trajectory here is :func:`sample_partial_trajectory` with the same generator. The steps are DDIM's on the
    pipeline's noise schedule (:func:`ddim_scheduler`), whatever scheduler the pipeline ships; the latent at index
    ``i`` is at the noise level :func:`trajectory_timesteps` gives.

    ``sample_size`` is the latents' side (:func:`veil.training.hardware.latent_size`); ``None``: the UNet's own.

    Returns:
        a list of ``len(conds)`` tensors, ``(len(t_encs[i]), channels, h, w)`` each.
    """
    unet = pipe.unet
    scheduler = ddim_scheduler(pipe, num_inference_steps)
    size, count = sample_size or unet.config.sample_size, conds.shape[0]
    latents = torch.cat([
        torch.randn((1, unet.config.in_channels, size, size), generator=generator, device="cpu", dtype=torch.float32)
        for _ in range(count)
    ]).to(pipe.device, unet.dtype)
    latents = latents * scheduler.init_noise_sigma
    wanted = [set(int(i) for i in indices) for indices in t_encs]
    last = max(max(indices) for indices in wanted)
    kept = [{} for _ in range(count)]
    for index, timestep in enumerate(scheduler.timesteps):
        for row, indices in enumerate(wanted):
            if index in indices:
                kept[row][index] = latents[row : row + 1]
        if index >= last:
            break
        model_input = scheduler.scale_model_input(latents, timestep)
        noise_pred = guided_noise_pred(unet, model_input, timestep, conds, uncond, guidance_scale)
        latents = scheduler.step(noise_pred, timestep, latents).prev_sample
    return [torch.cat([kept[row][int(i)] for i in indices]) for row, indices in enumerate(t_encs)]


class TrajectoryPool:
    """Hands out one partial DDIM trajectory per training step, sampling ``size`` of them at a time.

    A batched run costs far less per trajectory than single ones on a CPU (the shapes-world UNet:
    14.7 ms per sample at batch 2, 4.5 ms at batch 16), at the price of trajectories up to ``size − 1``
    steps older than the model being trained. ``size=1`` is the published one-trajectory-per-step sampling.

    Each request is ``(cond, t_encs, info)``: the text states ``(r, tokens, width)`` to follow (``r``
    trajectories, one per prompt, all kept at the same step indices and handed back concatenated, the
    first prompt's first), the step indices to keep and anything the caller wants back. Requests of one ``group`` (the caller's
    ``info["group"]``, default one group) are sampled together inside ``view(group)``.
    """

    def __init__(self, size=1):
        self.size = max(1, int(size))
        self._queue = []

    def clear(self):
        self._queue = []

    @torch.no_grad()
    def next(self, pipe, draw, uncond, *, num_inference_steps, guidance_scale, generator, view=None, sample_size=None):
        """``(latents, cond, t_encs, info)`` of the next trajectory; ``draw(generator)`` makes one request."""
        if not self._queue:
            requests = [draw(generator) for _ in range(self.size)]
            latents = [None] * len(requests)
            groups = {}
            for i, (_, _, info) in enumerate(requests):
                groups.setdefault((info or {}).get("group"), []).append(i)
            for group, rows in groups.items():
                counts = [requests[i][0].shape[0] for i in rows]
                with view(group) if view is not None else contextlib.nullcontext():
                    sampled = sample_partial_trajectories(
                        pipe, torch.cat([requests[i][0] for i in rows]), uncond,
                        [requests[i][1] for i, count in zip(rows, counts) for _ in range(count)],
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
                        sample_size=sample_size,
                    )
                ends = list(itertools.accumulate(counts))
                for i, start, end in zip(rows, [0] + ends[:-1], ends):
                    latents[i] = torch.cat(sampled[start:end])
            self._queue = [(value, *request) for value, request in zip(latents, requests)]
        return self._queue.pop(0)


def negative_guidance_target(noise_uncond, noise_cond, negative_guidance=1.0):
    """ESD's target ``eps*(x_t,t,∅) − eta·(eps*(x_t,t,c) − eps*(x_t,t,∅))``."""
    return noise_uncond - negative_guidance * (noise_cond - noise_uncond)
