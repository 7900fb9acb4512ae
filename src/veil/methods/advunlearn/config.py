"""AdvUnlearn configuration."""

import re
import typing
from dataclasses import dataclass, field

from ...errors import VeilError
from ..base import ESDSamplingConfig, MethodConfig, TrainingConfig, check_choice, check_positive, check_synonyms, phrasings

# The 80 object categories of COCO, each as "a photo of a <object>": the kind of retain set the authors use on SD
# (their utility term draws from COCO object prompts), written out here so that a run needs no dataset file.
COCO_OBJECTS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


def coco_object_prompts():
    return [f"a photo of a {name}" for name in COCO_OBJECTS]


@dataclass
class AdvUnlearnConfig(MethodConfig, ESDSamplingConfig, TrainingConfig):
    """AdvUnlearn. Defaults follow the authors' SD 1.4 script and example command (1000 steps at 1e-5, 30 attack steps,
    retain weight 0.3 on COCO object prompts)."""

    layers: typing.List[int] = field(
        default_factory=list,
        metadata={"help": "Text-encoder layers to train, e.g. [0, 1, 2]; empty: every layer (the paper's text_encoder_full)."},
    )
    component: str = field(
        default="all",
        metadata={"help": "Parts of each layer to train: all (with its norms and the final norm), attn or mlp."},
    )
    samples_per_trajectory: int = field(
        default=1, metadata={"help": "Training samples (distinct t_enc) taken from each DDIM trajectory (the authors: 1)."}
    )
    max_train_steps: int = field(default=1000, metadata={"help": "Unlearning steps, each after its attack."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Adam learning rate of the text encoder."})
    attack_steps: int = field(default=30, metadata={"help": "Steps of the inner attack that finds the adversarial tokens."})
    attack_learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate of the adversarial token vectors."})
    attack_tokens: int = field(default=1, metadata={"help": "Adversarial tokens put before the concept prompt."})
    attack_method: str = field(
        default="pgd", metadata={"help": "pgd (Adam on the token vectors' gradient) or fast_at (Adam on its sign)."}
    )
    attack_init: str = field(
        default="random", metadata={"help": "Start of each attack: random (vocabulary tokens) or latest (the last attack's)."}
    )
    attack_every: int = field(default=1, metadata={"help": "Unlearning steps between two attacks (1: before every step)."})
    warmup_steps: int = field(default=200, metadata={"help": "First steps unlearn the plain prompt, without an attack."})
    plain_weight: float = field(
        default=0.0, metadata={"help": "After the warm-up, weight of also unlearning the prompt without adversarial tokens (0: the paper)."}
    )
    unconditional_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of keeping the empty prompt's prediction (the unconditional half) unchanged (0: the paper)."},
    )
    retain_prompts: typing.List[str] = field(
        default_factory=coco_object_prompts,
        metadata={"help": "Prompts whose predictions must stay the original's (those naming a concept are left out)."},
    )
    retain_weight: float = field(default=0.3, metadata={"help": "Weight of the utility term on retain prompts; 0 turns it off."})
    retain_batch: int = field(default=5, metadata={"help": "Retain prompts per step, each with its own trajectory."})
    synonyms: typing.Dict[str, typing.List[str]] = field(
        default_factory=dict, metadata={"help": "Other phrasings of a concept, {concept: [phrase, ...]}, unlearned too."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "max_train_steps", "learning_rate", "attack_learning_rate", "attack_tokens", "attack_every",
                       "retain_batch")
        for name in ("attack_steps", "warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise VeilError(f"{name.replace('_', ' ')} must be a whole number of 0 or more, got {value!r}.")
        for name in ("retain_weight", "plain_weight", "unconditional_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise VeilError(f"{name.replace('_', ' ')} must be 0 or more, got {value!r}.")
        check_choice(self, "component", ("all", "attn", "mlp"))
        check_choice(self, "attack_method", ("pgd", "fast_at"))
        check_choice(self, "attack_init", ("random", "latest"))
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            self.layers = [self.layers]
        if not isinstance(self.layers, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers):
            raise VeilError(f"layers must be a list of text-encoder layer numbers from 0, e.g. [0, 1], got {self.layers!r}.")
        self.layers = sorted(set(self.layers))
        if isinstance(self.retain_prompts, str):
            self.retain_prompts = [self.retain_prompts]
        self.retain_prompts = [str(p).strip() for p in self.retain_prompts if str(p).strip()]
        self.check_sampling()
        self.check_training()
        check_synonyms(self)
        if self.retain_weight > 0 and not self.kept_retain_prompts():
            raise VeilError(
                "The utility term has no retain prompt that leaves the concepts out; give retain_prompts (prompts to keep, "
                "e.g. [a photo of a dog]) or set retain_weight=0."
            )

    def kept_retain_prompts(self):
        """``retain_prompts`` without those that name a concept or one of its synonyms (as whole words)."""
        names = [p for c in self.concepts for p in phrasings(self, c)]
        patterns = [re.compile(r"(?<!\w)" + re.escape(n.lower()) + r"(?!\w)") for n in names]
        return [p for p in self.retain_prompts if not any(pattern.search(p.lower()) for pattern in patterns)]
