"""MACE configuration."""

import typing
from dataclasses import dataclass, field

from ...errors import VeilError
from ..base import MethodConfig, check_choice, check_positive, check_preserve_scale, check_synonyms, check_templates


@dataclass
class MACEConfig(MethodConfig):
    """Mass Concept Erasure. Defaults follow the authors' SD 1.x object configs (rank 1, 50 steps at 1e-5, lambda 1e3)."""

    guide: str = field(default="", metadata={"help": "What the concept's prompts are refined towards: nothing, or a super-category ('ground')."})
    preserve_concepts: typing.List[str] = field(default_factory=list, metadata={"help": "Concepts whose projections the refinement and the fusion keep."})
    preserve_scale: float = field(default=0.0, metadata={"help": "Weight of the preserve terms in the refinement and the fusion."})
    regularization: float = field(default=1000.0, metadata={"help": "lambda: ridge pull of every closed-form edit towards the weights before it."})
    synonyms: typing.Dict[str, typing.List[str]] = field(
        default_factory=dict, metadata={"help": "Other phrasings of a concept, {concept: [phrase, ...]}, erased too."}
    )
    templates: typing.List[str] = field(
        default_factory=lambda: ["{}", "a photo of {}"],
        metadata={"help": "Prompts with {} where the concept goes, for the refinement, the LoRAs and the fusion."},
    )
    rank: int = field(default=1, metadata={"help": "Rank of each concept's LoRA on every cross-attention to_k and to_v."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Adam learning rate of the LoRAs."})
    max_train_steps: int = field(default=50, metadata={"help": "LoRA training steps per concept."})
    images_per_concept: int = field(default=8, metadata={"help": "Images of each concept the LoRA is trained on."})
    region: str = field(
        default="attention",
        metadata={"help": "The concept's region: attention (its tokens' cross-attention) or renderer (shapes-world mask)."},
    )
    region_threshold: float = field(default=0.5, metadata={"help": "Share of its peak above which a pixel of the attention map is in the region."})
    generation_steps: int = field(default=30, metadata={"help": "Sampling steps of each generated training image (region: attention)."})
    resolution: int = field(
        default=None, metadata={"help": "Side in pixels of the generated training images (SD: a multiple of 64); none: the model's own."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "regularization", "rank", "learning_rate", "max_train_steps", "images_per_concept", "generation_steps")
        if self.resolution is not None:
            check_positive(self, "resolution")
        check_choice(self, "region", ("attention", "renderer"))
        check_templates(self, "MACE")
        check_synonyms(self)
        check_preserve_scale(self)
        if not 0.0 < self.region_threshold < 1.0:
            raise VeilError(f"region_threshold must lie between 0 and 1, got {self.region_threshold!r}.")
        if self.region == "renderer":
            from ...shapes import world_data

            unknown = [c for c in self.concepts if c not in world_data().CONCEPT_KIND]  # the bundled world's
            if unknown:
                raise VeilError(f"region 'renderer' knows only shapes-world concepts, not {unknown[0]!r}; use region 'attention'.")
