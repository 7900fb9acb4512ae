from .config import PRESETS, SLDConfig
from .method import SLD

__all__ = ["PRESETS", "SLD", "SLDConfig"]
