"""RECE configuration."""

from dataclasses import dataclass, field

from ...errors import VeilError
from ..base import check_positive
from ..uce.config import UCEConfig


@dataclass
class RECEConfig(UCEConfig):
    """Reliable and Efficient Concept Erasure: UCE's edit, then rounds that erase the embeddings which still
    regenerate the concept. Defaults follow the authors' SD 1.4 nudity run (every token row, lambda 0.1, 3 rounds,
    rho 0.1, preserve 0.1)."""

    token_selection: str = field(
        default="all", metadata={"help": "Token states edited: all (the authors' RECE code), last_token or last_token_to_end."}
    )
    regularization: float = field(default=0.1, metadata={"help": "lambda, the pull towards the original weights (the authors': 0.1)."})

    epochs: int = field(default=3, metadata={"help": "Rounds of: derive the embedding that regenerates the concept, erase it too."})
    embedding_regularization: float = field(
        default=0.1, metadata={"help": "rho: ridge weight on the derived embedding's norm (the authors: 0.1 nudity, 1e-3 objects)."}
    )
    round_preserve_scale: float = field(
        default=0.1, metadata={"help": "Weight of the preserve terms (the empty prompt and preserve_concepts) in each round's edit."}
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise VeilError(f"epochs must be a whole number of rounds, 0 or more, got {self.epochs!r}.")
        check_positive(self, "embedding_regularization")
        if self.round_preserve_scale < 0:
            raise VeilError(f"round preserve scale must be 0 or more, got {self.round_preserve_scale!r}.")
