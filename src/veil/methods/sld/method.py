"""SLD: Safe Latent Diffusion (Schramowski et al., CVPR 2023), as a hook on a stock pipeline."""

import torch

from ...registry import register_method
from ...training.sampling import encode_prompts
from ..base import HookMethod
from .config import SLDConfig


@register_method("sld")
class SLD(HookMethod):
    """Safe Latent Diffusion (Schramowski et al., CVPR 2023, arXiv 2211.05105).

    Inference-time guidance away from the concept text during sampling; nothing is trained and the
    artifact holds only the config. The UNet's output for the conditional half of each
    classifier-free-guidance batch is shifted so that the pipeline's own guidance formula yields
    SLD's ``eps_u + s_g·(eps_c − eps_u − γ_S)``.
    """

    config_class = SLDConfig
    multi_concept = (
        "The concepts are joined into one safety text ('circle, square'), as the paper's safety concept lists many in one prompt."
    )
    pipeline_export_refusal = "steers each sampling step instead of changing weights"

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self._concept_embeds = None
        self._state = None

    def attach(self, pipe):
        if self.attached_to is pipe:
            return
        self._concept_embeds = encode_prompts(pipe, [", ".join(self.config.concepts)])
        # A forward hook, because no public pipeline door exposes the noise prediction between the
        # UNet call and the guidance formula (callbacks see only latents).
        self._handles = [pipe.unet.register_forward_hook(self._hook, with_kwargs=True)]
        self._pipe = pipe
        self._state = None
        self.attached_to = pipe

    def detach(self, pipe):
        if self.attached_to is not pipe:
            return
        self.remove_hooks()

    def sampling_warning(self, num_inference_steps):
        warmup = self.config.warmup_steps
        if num_inference_steps <= warmup:
            return (f"SLD starts after {warmup} warm-up steps, so with {num_inference_steps} sampling steps it never acts; "
                    f"sample with more than {warmup} steps or set warmup_steps lower.")
        return None

    @torch.no_grad()
    def _hook(self, unet, args, kwargs, output):
        pipe = self._pipe
        if self._bypass or not getattr(pipe, "do_classifier_free_guidance", False) or torch.is_grad_enabled():
            return output
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        noise = output[0] if isinstance(output, tuple) else output.sample
        if noise.shape[0] % 2:
            return output
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        if self._state is None or t >= self._state["t"]:  # a new sampling run starts at the highest timestep
            self._state = {"step": 0, "momentum": torch.zeros_like(noise.chunk(2)[1])}
        self._state["t"] = t
        config = self.config
        noise_uncond, noise_text = noise.chunk(2)
        half = sample.chunk(2)[1]
        concept = self._concept_embeds.to(noise.dtype).expand(half.shape[0], -1, -1)
        self._bypass = True
        try:
            noise_concept = unet(half, timestep, encoder_hidden_states=concept).sample
        finally:
            self._bypass = False
        # SLD eq. 5–8: element-wise scale, switched off where the prompt is already far from the concept.
        difference = noise_text - noise_concept
        scale = torch.clamp(difference.abs() * config.sld_guidance_scale, max=1.0)
        scale = torch.where(difference >= config.threshold, torch.zeros_like(scale), scale)
        safety = (noise_concept - noise_uncond) * scale + config.momentum_scale * self._state["momentum"]
        self._state["momentum"] = config.momentum_beta * self._state["momentum"] + (1 - config.momentum_beta) * safety
        step = self._state["step"]
        self._state["step"] = step + 1
        if step < config.warmup_steps:
            return output
        # The pipeline forms eps_u + g·(eps_c' − eps_u); with eps_c' = eps_c − safety that is SLD's guidance.
        shifted = torch.cat([noise_uncond, noise_text - safety])
        if isinstance(output, tuple):
            return (shifted,) + tuple(output[1:])
        output.sample = shifted
        return output
