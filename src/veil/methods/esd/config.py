"""ESD configuration."""

from dataclasses import dataclass, field

from ..base import ESDSamplingConfig, MethodConfig, TrainingConfig, check_choice, check_positive


@dataclass
class ESDConfig(MethodConfig, ESDSamplingConfig, TrainingConfig):
    """Erased Stable Diffusion. Defaults follow the authors' diffusers code (200 steps at 5e-5)."""

    train_method: str = field(
        default="xattn", metadata={"help": "UNet weights to train: xattn, noxattn, selfattn or full."}
    )
    mode: str = field(
        default="paper", metadata={"help": "paper: train_method's layers as the authors' script picks them; veil: veil's sets."}
    )
    max_train_steps: int = field(default=200, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Adam learning rate."})

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "train_method", ("xattn", "noxattn", "selfattn", "full"))
        check_choice(self, "mode", ("paper", "veil"))
        check_positive(self, "max_train_steps", "learning_rate")
        self.check_sampling()
        self.check_training()
