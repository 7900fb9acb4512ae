from .config import ESDConfig
from .method import ESD

__all__ = ["ESD", "ESDConfig"]
