from .config import MACEConfig
from .method import MACE, region_attention_loss

__all__ = ["MACE", "MACEConfig", "region_attention_loss"]
