"""KPOP configuration and its presets."""

import typing
from dataclasses import dataclass, field

from ...errors import VeilError
from ..base import ESDSamplingConfig, MethodConfig, TrainingConfig, check_choice, check_positive, check_synonyms
from .model import LAYERS

# ``paper``: the authors' training (docs/methods/kpop.md) with veil's choices where it is open: key learning rate
# 1e-3 (the authors' 1e-5 barely moves unit-scale embeddings), losses on noise; no preservation.
# ``tuned``: the same plus the preservation term over retain concepts. In both the key is a secret random draw that
# does not train (key_start random, key_learning_rate 0): a key the authors' way (E(c)[:m], trained) is trained again
# from the public settings and unlocks (docs/experiments/kpop-rebuilt-key.md); set both fields to have it anyway.
PRESETS = {
    "paper": dict(max_train_steps=1000, learning_rate=1e-5, key_learning_rate=0.0, hide_weight=1.0,
                  recover_weight=0.1, loss_space="eps", retain_weight=0.0, key_retain_weight=0.0, decoy_weight=0.0),
    "tuned": dict(max_train_steps=1000, learning_rate=1e-5, key_learning_rate=0.0, hide_weight=1.0,
                  recover_weight=0.1, loss_space="eps", retain_weight=0.1, key_retain_weight=1.0, decoy_weight=1.0),
}


@dataclass
class KPOPConfig(MethodConfig, ESDSamplingConfig, TrainingConfig):
    """Hiding and recovering a concept behind a learnable key. ``preset`` fills the fields left unset."""

    preset: str = field(
        default="paper", metadata={"help": "paper (no preservation) or tuned (with it); fills the fields not given."}
    )
    layers: str = field(
        default="mid", metadata={"help": "Cross-attention layers that read the key: mid, midout (mid and up) or all."}
    )
    train_method: str = field(
        default="xattn", metadata={"help": "UNet weights to train: xattn, noxattn or xattn_kv (cross-attention's to_k, to_v)."}
    )
    num_key_tokens: int = field(default=10, metadata={"help": "m: tokens in each of P_k and P_v."})
    max_train_steps: int = field(default=None, metadata={"help": "Steps, each a UNet step then a key step (preset: 1000)."})
    learning_rate: float = field(default=None, metadata={"help": "Adam learning rate of the UNet (preset: 1e-5)."})
    key_learning_rate: float = field(
        default=None, metadata={"help": "Adam learning rate of the key; 0 (preset): the key keeps its secret random start."}
    )
    hide_weight: float = field(default=None, metadata={"help": "w1: weight of the hiding loss in the UNet step (preset: 1.0)."})
    recover_weight: float = field(
        default=None, metadata={"help": "w2: weight of the recovery loss in the UNet step (preset: 0.1)."}
    )
    key_finish_steps: int = field(
        default=0, metadata={"help": "Key-only steps on L_recover after the UNet's, the UNet frozen (0: none)."}
    )
    key_update: str = field(
        default="alternate", metadata={"help": "alternate (a UNet step, then a key step) or joint (one pass for both)."}
    )
    loss_space: str = field(
        default=None, metadata={"help": "eps (losses on predicted noise) or x0 (on predicted clean latents); preset: eps."}
    )
    retain_concepts: typing.List[str] = field(
        default_factory=list, metadata={"help": "Prompts whose predictions must not change (the preservation term)."}
    )
    context_retain_concepts: typing.List[str] = field(
        default_factory=list,
        metadata={"help": "Concepts preserved in the step's own context instead of bare retain concepts."},
    )
    retain_weight: float = field(
        default=None, metadata={"help": "Weight of the preservation term; 0 turns it off (preset paper: 0, tuned: 0.1)."}
    )
    key_retain_weight: float = field(
        default=None, metadata={"help": "Weight of retain concepts with the key attached matching the original (tuned: 1)."}
    )
    decoy_weight: float = field(
        default=None, metadata={"help": "Weight of hiding with a decoy key of the key's norm attached (tuned: 1)."}
    )
    word_decoy_probability: float = field(
        default=0.0, metadata={"help": "Share of decoy keys made from decoy_words' text states instead of random (0: none)."}
    )
    key_init_noise: float = field(
        default=1.0,
        metadata={"help": "Secret OS-random noise (in token norms) added to the key's start E(c)[:m]; above 0."}
    )
    key_start: str = field(
        default="random",
        metadata={"help": "concept (E(c)[:m] plus the secret noise) or random (a secret random key of E(c)[:m]'s norm)."},
    )
    decoy_words: typing.List[str] = field(
        default_factory=list,
        metadata={"help": "Words that make word decoys (empty: retain_concepts and context_retain_concepts)."},
    )
    synonyms: typing.Dict[str, typing.List[str]] = field(
        default_factory=dict, metadata={"help": "Other phrasings of a concept, {concept: [phrase, ...]}, trained on too."}
    )

    retired_fields = {"shifted_decoy_probability": 0.0, "rival_decoy_probability": 0.0, "retain_trajectory_probability": 0.0}

    def __post_init__(self):
        super().__post_init__()
        self.fill_from_preset(PRESETS)
        check_choice(self, "layers", LAYERS)
        check_choice(self, "train_method", ("xattn", "xattn_kv", "noxattn"))
        check_choice(self, "loss_space", ("eps", "x0"))
        check_choice(self, "key_update", ("alternate", "joint"))
        check_choice(self, "key_start", ("concept", "random"))
        check_positive(self, "num_key_tokens", "max_train_steps", "learning_rate", "ddim_steps", "samples_per_trajectory")
        if isinstance(self.key_learning_rate, bool) or not isinstance(self.key_learning_rate, (int, float)) \
                or not self.key_learning_rate >= 0:
            raise VeilError(f"key learning rate must be 0 or more, got {self.key_learning_rate!r}.")
        if isinstance(self.key_finish_steps, bool) or not isinstance(self.key_finish_steps, int) or self.key_finish_steps < 0:
            raise VeilError(f"key_finish_steps must be a whole number, 0 or more, got {self.key_finish_steps!r}.")
        if self.key_learning_rate == 0 and self.key_finish_steps > 0:
            raise VeilError("key_finish_steps trains the key alone, but key_learning_rate is 0 (the key does not train); "
                            "set key_finish_steps=0 or a key learning rate above 0.")
        for name in ("hide_weight", "recover_weight", "retain_weight", "key_retain_weight", "decoy_weight", "key_init_noise"):
            if getattr(self, name) < 0:
                raise VeilError(f"{name} must be 0 or more, got {getattr(self, name)!r}.")
        if isinstance(self.retain_concepts, str):
            self.retain_concepts = [self.retain_concepts]
        self.retain_concepts = [str(c).strip() for c in self.retain_concepts]
        for name in ("retain_weight", "key_retain_weight"):
            if getattr(self, name) > 0 and not self.retain_concepts:
                raise VeilError(
                    f"{name} is {getattr(self, name)} but retain_concepts is empty; name the concepts to preserve, "
                    f"e.g. retain_concepts=[square, triangle], or set {name}=0."
                )
        if isinstance(self.context_retain_concepts, str):
            self.context_retain_concepts = [self.context_retain_concepts]
        self.context_retain_concepts = [str(c).strip() for c in self.context_retain_concepts if str(c).strip()]
        hidden = set(self.concepts) & (set(self.retain_concepts) | set(self.context_retain_concepts))
        if hidden:
            raise VeilError(f"{sorted(hidden)[0]!r} is both hidden and retained; remove it from retain_concepts.")
        if not 0.0 <= self.word_decoy_probability <= 1.0:
            raise VeilError(f"word_decoy_probability must lie in [0, 1], got {self.word_decoy_probability!r}.")
        if isinstance(self.decoy_words, str):
            self.decoy_words = [self.decoy_words]
        self.decoy_words = [str(c).strip() for c in self.decoy_words if str(c).strip()]
        if set(self.concepts) & set(self.decoy_words):
            raise VeilError(f"{sorted(set(self.concepts) & set(self.decoy_words))[0]!r} is both hidden and a decoy word; "
                            "remove it from decoy_words.")
        if self.word_decoy_probability > 0 and not self.decoy_word_list:
            raise VeilError("word_decoy_probability builds decoys from decoy_words (or, if empty, retain_concepts and "
                            "context_retain_concepts), and all are empty; name some, e.g. decoy_words=[square, triangle].")
        check_synonyms(self)
        self.check_sampling()
        self.check_training()

    @property
    def decoy_word_list(self):
        """The words word decoys are made of: decoy_words, or else retain_concepts and context_retain_concepts."""
        return self.decoy_words or self.retain_concepts + self.context_retain_concepts

    @classmethod
    def paper(cls, concepts, **overrides):
        """The paper-faithful settings (docs/methods/kpop.md)."""
        return cls(concepts=concepts, preset="paper", **overrides)

    @classmethod
    def tuned(cls, concepts, retain_concepts, **overrides):
        """The tuned settings: the paper's plus the preservation term over ``retain_concepts``."""
        return cls(concepts=concepts, preset="tuned", retain_concepts=retain_concepts, **overrides)
