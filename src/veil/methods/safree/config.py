"""SAFREE configuration."""

import typing
from dataclasses import dataclass, field

from ...errors import VeilError
from ..base import MethodConfig, check_synonyms


@dataclass
class SAFREEConfig(MethodConfig):
    """SAFREE's training-free guard. Defaults follow the authors' SD 1.4 run (alpha 0.01, 10 self-validated
    steps, re-attention scales 0.9 and 0.2)."""

    synonyms: typing.Dict[str, typing.List[str]] = field(
        default_factory=dict, metadata={"help": "Other phrasings of a concept, {concept: [phrase, ...]}; they span the concept subspace too."}
    )
    concept_space: typing.List[str] = field(
        default_factory=list, metadata={"help": "More words or phrases that span the concept subspace (the authors' keyword list)."}
    )
    alpha: float = field(
        default=0.01, metadata={"help": "Token filter margin: a token triggers when masking it puts the prompt 1+alpha times further away."}
    )
    self_validation: bool = field(
        default=True, metadata={"help": "Self-validating filter: the projected prompt only for the first steps, the more the more it moved."}
    )
    max_safe_steps: int = field(
        default=10, metadata={"help": "The self-validating filter's most steps (of the run's sampling steps) with the projected prompt."}
    )
    re_attention: bool = field(
        default=True, metadata={"help": "Latent re-attention: damp the skip features' low frequencies that the projected prompt raises."}
    )
    re_attention_scales: typing.List[float] = field(
        default_factory=lambda: [0.9, 0.2], metadata={"help": "s1, s2: the damping of the deepest up blocks' skip features and of the next up block's."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_synonyms(self)
        if isinstance(self.concept_space, str):
            self.concept_space = [self.concept_space]
        self.concept_space = [str(c).strip() for c in self.concept_space if str(c).strip()]
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha < 0:
            raise VeilError(f"alpha must be 0 or more, got {self.alpha!r}.")
        if isinstance(self.max_safe_steps, bool) or not isinstance(self.max_safe_steps, int) or self.max_safe_steps < 0:
            raise VeilError(f"max safe steps must be a whole number of steps, 0 or more, got {self.max_safe_steps!r}.")
        scales = self.re_attention_scales
        if (not isinstance(scales, (list, tuple)) or len(scales) != 2
                or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1 for s in scales)):
            raise VeilError(f"re_attention_scales takes two numbers in [0, 1] (s1, s2), e.g. [0.9, 0.2], got {scales!r}.")
        self.re_attention_scales = [float(s) for s in scales]
