from .config import RECEConfig
from .method import RECE, rece_adversarial_embedding

__all__ = ["RECE", "RECEConfig", "rece_adversarial_embedding"]
