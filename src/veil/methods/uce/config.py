"""UCE configuration."""

import typing
from dataclasses import dataclass, field

from ...errors import VeilError
from ..base import MethodConfig, check_positive, check_synonyms

TOKEN_SELECTIONS = ("last_token", "last_token_to_end", "all")


@dataclass
class UCEConfig(MethodConfig):
    """Unified Concept Editing. The defaults are paper mode: the authors' released erasing script (each phrase's
    last subject token, lambda 0.5, erase and preserve scale 1); ``token_selection`` picks the paper-era
    script's token rows or veil's own (every position after the start token, the shapes preset's)."""

    guide: str = field(default="", metadata={"help": "What erased concepts map to: the empty prompt (default) or e.g. 'a shape'."})
    preserve_concepts: typing.List[str] = field(default_factory=list, metadata={"help": "Concepts whose projections must not move."})
    token_selection: str = field(
        default="last_token",
        metadata={"help": "Token states edited: last_token (paper mode), last_token_to_end (paper-era) or all (veil's)."},
    )
    erase_scale: float = field(default=1.0, metadata={"help": "Weight of the erase terms (the authors': 1)."})
    preserve_scale: typing.Optional[float] = field(
        default=None, metadata={"help": "Weight of the preserve terms; None: 1, or max(0.1, 1/n) for last_token_to_end."}
    )
    regularization: float = field(
        default=0.5, metadata={"help": "lambda, the pull towards the original weights (the authors' scripts: 0.5)."}
    )
    edit_keys: bool = field(default=True, metadata={"help": "Edit to_k as well as to_v."})
    synonyms: typing.Dict[str, typing.List[str]] = field(
        default_factory=dict,
        metadata={"help": "Other phrasings of a concept, {concept: [phrase, ...]}, erased too."},
    )
    templates: typing.List[str] = field(
        default_factory=lambda: ["{}"],
        metadata={"help": "Prompts with {} where the concept goes, each phrase encoded in every one ('{}': alone)."},
    )

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "erase_scale", "regularization")
        if self.token_selection not in TOKEN_SELECTIONS:
            raise VeilError(f"token_selection must be one of {', '.join(TOKEN_SELECTIONS)}, got {self.token_selection!r}.")
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        self.templates = [str(t) for t in self.templates]
        bad = [t for t in self.templates if t.count("{}") != 1]
        if not self.templates or bad:
            raise VeilError(f"Each UCE template needs exactly one {{}} where the concept goes, got {(bad or ['(none)'])[0]!r}.")
        check_synonyms(self)
        if self.preserve_scale is not None and self.preserve_scale < 0:
            raise VeilError(f"preserve scale must be 0 or more, got {self.preserve_scale!r}.")

    def effective_preserve_scale(self):
        """``preserve_scale``, or the default of the chosen script when it is None."""
        if self.preserve_scale is not None:
            return float(self.preserve_scale)
        if self.token_selection == "last_token_to_end":
            # The paper-era script preserves '' besides the given phrases and weighs them 1/n, at least 0.1.
            return max(0.1, 1.0 / (1 + len(self.preserve_concepts) * len(self.templates)))
        return 1.0
