"""ESD configuration."""

from dataclasses import dataclass, field

from ..base import MethodConfig, check_choice, check_positive


@dataclass
class ESDConfig(MethodConfig):
    """Erased Stable Diffusion. Defaults follow the authors' diffusers code (200 steps at 5e-5)."""

    train_method: str = field(
        default="xattn",
        metadata={"help": "Which UNet weights to train: xattn (cross-attention; objects, styles), "
                  "noxattn (all but cross-attention; nudity), selfattn, or full."},
    )
    max_train_steps: int = field(default=200, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Adam learning rate."})
    negative_guidance: float = field(default=1.0, metadata={"help": "eta: how far past the empty prompt to push."})
    start_guidance: float = field(
        default=3.0, metadata={"help": "Classifier-free guidance of the partial DDIM trajectories."}
    )
    ddim_steps: int = field(default=50, metadata={"help": "N: DDIM steps of the sampling schedule."})
    samples_per_trajectory: int = field(
        default=4, metadata={"help": "Training samples (distinct t_enc) taken from one DDIM trajectory."}
    )
    timestep_mapping: str = field(
        default="esd",
        metadata={"help": "esd: t ~ U[1000·t_enc/N, 1000·(t_enc+1)/N) as published; aligned: t from the "
                  "interval of the latent's own noise level."},
    )

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "train_method", ("xattn", "noxattn", "selfattn", "full"))
        check_choice(self, "timestep_mapping", ("esd", "aligned"))
        check_positive(self, "max_train_steps", "learning_rate", "ddim_steps", "samples_per_trajectory")
        if self.samples_per_trajectory > self.ddim_steps:
            self.samples_per_trajectory = self.ddim_steps
