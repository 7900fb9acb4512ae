"""DuMo: a trained copy of the UNet encoder feeding its skip connections, modulated per time and layer."""

from .compat import load_authors_checkpoint, save_authors_checkpoint
from .config import DuMoConfig
from .method import DuMo
from .model import DuMoEPR

__all__ = ["DuMo", "DuMoConfig", "DuMoEPR", "load_authors_checkpoint", "save_authors_checkpoint"]
