"""UCE configuration."""

import typing
from dataclasses import dataclass, field

from ...errors import VeilError
from ..base import MethodConfig, check_positive, check_synonyms


@dataclass
class UCEConfig(MethodConfig):
    """Unified Concept Editing. Defaults follow the authors' code (erase scale 1, lambda 0.1)."""

    guide: str = field(default="", metadata={"help": "What erased concepts map to: the empty prompt (default) or e.g. 'a shape'."})
    preserve_concepts: typing.List[str] = field(default_factory=list, metadata={"help": "Concepts whose projections must not move."})
    erase_scale: float = field(default=1.0, metadata={"help": "Weight of the erase terms."})
    preserve_scale: float = field(default=1.0, metadata={"help": "lambda: weight of the preserve terms."})
    regularization: float = field(default=0.1, metadata={"help": "gamma: ridge pull towards the original weights."})
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
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        self.templates = [str(t) for t in self.templates]
        bad = [t for t in self.templates if t.count("{}") != 1]
        if not self.templates or bad:
            raise VeilError(f"Each UCE template needs exactly one {{}} where the concept goes, got {(bad or ['(none)'])[0]!r}.")
        check_synonyms(self)
        if self.preserve_scale < 0:
            raise VeilError(f"preserve scale must be 0 or more, got {self.preserve_scale!r}.")
