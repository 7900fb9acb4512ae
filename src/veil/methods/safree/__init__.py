from .config import SAFREEConfig
from .method import SAFREE, concept_projection, low_frequency_reattention, safe_token_states

__all__ = ["SAFREE", "SAFREEConfig", "concept_projection", "low_frequency_reattention", "safe_token_states"]
