from .config import UCEConfig
from .method import UCE, uce_closed_form

__all__ = ["UCE", "UCEConfig", "uce_closed_form"]
