from .config import KPOPConfig
from .method import KPOP
from .model import KeyedCrossAttnProcessor, KeyPrompts, keyed_attention, select_key_sites

__all__ = ["KPOP", "KPOPConfig", "KeyPrompts", "KeyedCrossAttnProcessor", "keyed_attention", "select_key_sites"]
