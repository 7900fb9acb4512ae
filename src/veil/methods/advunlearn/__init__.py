from .config import AdvUnlearnConfig
from .method import AdvUnlearn, text_encoder_parameters

__all__ = ["AdvUnlearn", "AdvUnlearnConfig", "text_encoder_parameters"]
