"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023)."""

import torch
import torch.nn.functional as F

from ...registry import register_method
from ...training.hardware import latent_size
from ...training.sampling import (
    PromptCache,
    TrajectoryPool,
    negative_guidance_target,
    trajectory_timesteps,
)
from ..weights import WeightEditMethod, select_unet_parameters
from .config import ESDConfig
from .presets import MODEL_PRESETS


@register_method("esd")
class ESD(WeightEditMethod):
    """Erased Stable Diffusion (Gandikota et al., ICCV 2023, arXiv 2303.07345).

    Fine-tunes a subset of the UNet (``train_method``) so that its noise prediction for the concept
    equals the negative-guidance target computed by the frozen original; the text encoder and VAE
    stay frozen. The frozen original is the same UNet with the edit ``disabled()``.
    """

    config_class = ESDConfig
    multi_concept = (
        "Each training step draws one of the concepts at random, as the authors' script does, so the concepts share max_train_steps."
    )
    model_presets = MODEL_PRESETS

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self._prompts = PromptCache()
        self._trajectories = TrajectoryPool(self.config.trajectory_batch)

    def edited_parameter_names(self, unet):
        return select_unet_parameters(unet, self.config.train_method, self.config.mode)

    @torch.no_grad()
    def make_batch(self, pipe, generator):
        config = self.config
        uncond = self._prompts(pipe, "")

        def draw(generator):
            step = config.draw_sample(generator)  # the concept alone, or in a context
            # batch_size trajectories of the prompt, each from its own noise.
            return self._prompts(pipe, step.prompt).expand(config.batch_size, -1, -1), step.t_encs, {"anchor": step.anchor}

        latents, cond, t_encs, info = self._trajectories.next(
            pipe, draw, uncond, num_inference_steps=config.ddim_steps, guidance_scale=config.start_guidance, generator=generator,
            sample_size=latent_size(pipe, config.resolution),
        )
        t_encs, cond = t_encs * config.batch_size, cond[:1]  # the latents come trajectory after trajectory
        # The target's anchor: the empty prompt, or the context without the concept.
        anchor = self._prompts(pipe, info["anchor"])
        timesteps = trajectory_timesteps(pipe, t_encs, config.ddim_steps)  # each latent at its own noise level
        batch = latents.shape[0]
        cond, anchor = cond.expand(batch, -1, -1), anchor.expand(batch, -1, -1)
        with self.disabled(pipe):
            noise_anchor = pipe.unet(latents, timesteps, encoder_hidden_states=anchor).sample
            noise_cond = pipe.unet(latents, timesteps, encoder_hidden_states=cond).sample
        target = negative_guidance_target(noise_anchor, noise_cond, config.negative_guidance)
        return {"latents": latents, "timesteps": timesteps, "cond": cond, "target": target}

    def loss(self, pipe, batch, phase="main"):
        noise_pred = pipe.unet(batch["latents"], batch["timesteps"], encoder_hidden_states=batch["cond"]).sample
        return F.mse_loss(noise_pred.float(), batch["target"].float())
