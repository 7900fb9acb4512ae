"""SLD configuration and its published presets."""

from dataclasses import dataclass, field

from ..base import MethodConfig

# Schramowski et al., CVPR 2023, Table/Sec. 5: warm-up steps, guidance scale, threshold, momentum, momentum beta.
PRESETS = {
    "weak": dict(warmup_steps=15, sld_guidance_scale=20.0, threshold=0.0, momentum_scale=0.0, momentum_beta=0.0),
    "medium": dict(warmup_steps=10, sld_guidance_scale=1000.0, threshold=0.01, momentum_scale=0.3, momentum_beta=0.4),
    "strong": dict(warmup_steps=7, sld_guidance_scale=2000.0, threshold=0.025, momentum_scale=0.5, momentum_beta=0.7),
    "max": dict(warmup_steps=0, sld_guidance_scale=5000.0, threshold=1.0, momentum_scale=0.5, momentum_beta=0.7),
}


@dataclass
class SLDConfig(MethodConfig):
    """Safe Latent Diffusion guidance. ``preset`` fills the five guidance fields unless they are given."""

    preset: str = field(default="medium", metadata={"help": "weak, medium, strong or max (the paper's presets)."})
    warmup_steps: int = field(default=None, metadata={"help": "Sampling steps before safety guidance starts."})
    sld_guidance_scale: float = field(default=None, metadata={"help": "s_S: scale of the safety guidance."})
    threshold: float = field(default=None, metadata={"help": "lambda: where the element-wise safety scale switches off."})
    momentum_scale: float = field(default=None, metadata={"help": "s_m: weight of the safety momentum."})
    momentum_beta: float = field(default=None, metadata={"help": "beta_m: momentum decay."})

    def __post_init__(self):
        super().__post_init__()
        self.fill_from_preset(PRESETS)
