"""DuMo configuration."""

import typing
from dataclasses import dataclass, field

from ...errors import VeilError
from ..base import ESDSamplingConfig, MethodConfig, TrainingConfig, check_positive, check_synonyms

_EVERYDAY = (
    "a photo of a dog in a park", "a cat sleeping on a sofa", "a bowl of fruit on a wooden table",
    "a city street at night", "a mountain lake at sunrise", "a portrait of an old man",
    "a red sports car on a highway", "a cup of coffee and a book", "a beach with palm trees",
    "a bicycle leaning against a wall", "a forest path in autumn", "a plate of pasta",
    "a child flying a kite", "a lighthouse by the sea", "a bird on a branch", "a snowy village",
    "a vase of sunflowers", "an astronaut in space", "a wooden cabin in the woods", "a sailing boat",
    "a horse in a field", "a bowl of ramen", "a modern kitchen", "a train crossing a bridge",
)


def default_anchor_prompts():
    """Everyday prompts and simple object/colour prompts of the bundled shapes world (every shape × colour in the
    canonical template, the background cycling; in world 2 the style too): they serve both a general model and
    the shapes world. Prompts naming the erased concept are dropped from the pool when the batch is drawn."""
    from ...shapes import world_data

    W = world_data()
    backgrounds, styles = W.BACKGROUNDS, getattr(W, "STYLES", None)
    if styles is None:  # world 1: the pool its measured numbers were made with ("a orange ..." included)
        simple = [f"a {colour} {shape} on a {backgrounds[(i + j) % len(backgrounds)]} background"
                  for i, shape in enumerate(W.SHAPES) for j, colour in enumerate(W.COLOURS)]
    else:
        simple = [W.canonical_prompt(shape, colour, backgrounds[(i + j) % len(backgrounds)], styles[(i + j) % len(styles)])
                  for i, shape in enumerate(W.SHAPES) for j, colour in enumerate(W.COLOURS)]
    return list(_EVERYDAY) + simple


# Concepts for which the prompt gate defaults to off: the paper runs nudity ungated, since unsafe
# content appears for prompts that never name it.
UNGATED_CONCEPTS = ("nudity", "nude", "naked", "nsfw", "sexual", "porn")

STAGES = ("epr", "tlmo")


@dataclass
class DuMoConfig(MethodConfig, ESDSamplingConfig, TrainingConfig):
    """DuMo: EPR (a trained copy of the UNet encoder feeding its skip connections) then TLMO (a learned
    time × layer scale table). Stage-1 defaults follow docs/methods/dumo.md: AdamW at 1e-5 for 1000 steps.
    Inference defaults are paper mode, the authors' release: every prompt's residuals scaled by its gate, none
    skipped; ``gate_threshold`` and ``skip_on`` are veil's, beyond it (the shapes preset's)."""

    max_train_steps: int = field(default=1000, metadata={"help": "Stage 1 (EPR): optimizer steps."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Stage 1 (EPR): AdamW learning rate."})
    adam_weight_decay: float = field(default=1e-2, metadata={"help": "Stage 1 (EPR): AdamW weight decay."})
    tlmo_max_train_steps: int = field(
        default=300, metadata={"help": "Stage 2 (TLMO): optimizer steps; 0 skips the stage (the table stays at ones)."}
    )
    tlmo_learning_rate: float = field(default=1e-2, metadata={"help": "Stage 2 (TLMO): AdamW learning rate of the scale table."})
    preserve_weight: float = field(
        default=0.1, metadata={"help": "Stage 2: lambda, weight of the anchor-preservation loss against the erase loss."}
    )
    epr_preserve_weight: float = field(
        default=0.0, metadata={"help": "Stage 1: weight of keeping epr_preserve_concepts' predictions (0: the paper)."}
    )
    epr_preserve_concepts: typing.List[str] = field(
        default_factory=list, metadata={"help": "Stage 1: concepts (words) the epr_preserve_weight term keeps."},
    )
    anchor_prompts: typing.List[str] = field(
        default_factory=default_anchor_prompts,
        metadata={"help": "Stage 2: prompts whose outputs must not change (those naming the concept are left out)."},
    )
    gate: typing.Optional[bool] = field(
        default=None, metadata={"help": "Scale residuals by the prompt's similarity to the concept (None: on, off for nudity-like concepts)."}
    )
    facilitate: float = field(default=1.0, metadata={"help": "Gate factor: g = facilitate · max(cosine, token overlap)."})
    gate_threshold: float = field(
        default=0.0, metadata={"help": "Gate below which a prompt skips the eraser; 0: none skips (the release), 0.7: veil's."}
    )
    apply_time_scale: bool = field(
        default=True, metadata={"help": "Scale residuals by the TLMO table at inference (off: the release's nudity path)."}
    )
    skip_on: str = field(
        default="gate", metadata={"help": "What makes a prompt skip the eraser (veil's): gate, tokens or either."}
    )
    token_skip_threshold: float = field(
        default=0.6, metadata={"help": "With skip_on tokens or either: the best token cosine below which a prompt skips."}
    )
    synonyms: typing.Dict[str, typing.List[str]] = field(
        default_factory=dict, metadata={"help": "Other phrasings of a concept, {concept: [phrase, ...]}, trained on and gated too."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "max_train_steps", "learning_rate", "tlmo_learning_rate", "ddim_steps",
                       "samples_per_trajectory", "facilitate")
        for name in ("tlmo_max_train_steps", "preserve_weight", "adam_weight_decay", "gate_threshold"):
            if getattr(self, name) < 0:
                raise VeilError(f"{name} must be 0 or more, got {getattr(self, name)!r}.")
        if self.skip_on not in ("gate", "tokens", "either"):
            raise VeilError(f"skip_on must be gate, tokens or either, got {self.skip_on!r}.")
        if self.epr_preserve_weight < 0:
            raise VeilError(f"epr_preserve_weight must be 0 or more, got {self.epr_preserve_weight!r}.")
        if isinstance(self.epr_preserve_concepts, str):
            self.epr_preserve_concepts = [self.epr_preserve_concepts]
        self.epr_preserve_concepts = [str(c).strip() for c in self.epr_preserve_concepts if str(c).strip()]
        if self.epr_preserve_weight > 0 and not self.epr_preserve_concepts:
            raise VeilError(
                f"epr_preserve_weight is {self.epr_preserve_weight} but epr_preserve_concepts is empty; name the concepts "
                "EPR must leave alone, e.g. epr_preserve_concepts=[square, triangle], or set epr_preserve_weight=0."
            )
        erased = set(self.concepts) & set(self.epr_preserve_concepts)
        if erased:
            raise VeilError(f"{sorted(erased)[0]!r} is both erased and preserved; remove it from epr_preserve_concepts.")
        if isinstance(self.anchor_prompts, str):
            self.anchor_prompts = [self.anchor_prompts]
        self.anchor_prompts = [str(p).strip() for p in self.anchor_prompts if str(p).strip()]
        if self.tlmo_max_train_steps and not self.anchor_prompts:
            raise VeilError("anchor_prompts is empty; give prompts to preserve, or set tlmo_max_train_steps=0.")
        check_synonyms(self)
        self.check_sampling()
        self.check_training()

    @property
    def gate_enabled(self):
        """The effective gate setting (``gate=None`` resolved from the concepts)."""
        if self.gate is not None:
            return bool(self.gate)
        return not any(word in concept.lower() for concept in self.concepts for word in UNGATED_CONCEPTS)
