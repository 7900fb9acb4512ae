"""KPOP configuration and its presets."""

import typing
from dataclasses import dataclass, field

from ...errors import VeilError
from ..base import ESDSamplingConfig, MethodConfig, TrainingConfig, check_choice, check_positive, check_synonyms
from .model import LAYERS

# ``paper``: the authors' training (METHODS.md §1) with the spec's Decisions: key learning rate
# 1e-3 (the authors' 1e-5 barely moves unit-scale embeddings), losses on noise; no preservation.
# ``tuned``: the same plus the preservation term over retain concepts.
PRESETS = {
    "paper": dict(max_train_steps=1000, learning_rate=1e-5, key_learning_rate=1e-3, hide_weight=1.0,
                  recover_weight=0.1, loss_space="eps", retain_weight=0.0, key_retain_weight=0.0, decoy_weight=0.0),
    "tuned": dict(max_train_steps=1000, learning_rate=1e-5, key_learning_rate=1e-3, hide_weight=1.0,
                  recover_weight=0.1, loss_space="eps", retain_weight=0.1, key_retain_weight=1.0, decoy_weight=1.0),
}


@dataclass
class KPOPConfig(MethodConfig, ESDSamplingConfig, TrainingConfig):
    """Hiding and recovering a concept behind a learnable key. ``preset`` fills the fields left unset."""

    preset: str = field(
        default="paper",
        metadata={"help": "paper (the authors' training, no preservation) or tuned (adds the retain-concept "
                  "preservation term); fills every field below that is not given."},
    )
    layers: str = field(
        default="mid",
        metadata={"help": "Cross-attention layers that read the key: mid (mid block; the authors' object runs), "
                  "midout (mid and up blocks) or all."},
    )
    train_method: str = field(
        default="xattn",
        metadata={"help": "UNet weights to train: xattn (cross-attention; objects, styles), noxattn "
                  "(all but cross-attention, time embedding and output conv; nudity) or xattn_kv (ours: only "
                  "cross-attention's to_k and to_v, the projections of the text and key tokens)."},
    )
    num_key_tokens: int = field(default=10, metadata={"help": "m: tokens in each of P_k and P_v."})
    max_train_steps: int = field(default=None, metadata={"help": "Steps, each a UNet step then a key step (preset: 1000)."})
    learning_rate: float = field(default=None, metadata={"help": "Adam learning rate of the UNet (preset: 1e-5)."})
    key_learning_rate: float = field(default=None, metadata={"help": "Adam learning rate of the key (preset: 1e-3)."})
    hide_weight: float = field(default=None, metadata={"help": "w1: weight of the hiding loss in the UNet step (preset: 1.0)."})
    recover_weight: float = field(
        default=None, metadata={"help": "w2: weight of the recovery loss in the UNet step (preset: 0.1)."}
    )
    key_finish_steps: int = field(
        default=0,
        metadata={"help": "Ours: key-only steps on L_recover after the UNet's steps, the UNet frozen (a second training "
                  "stage): the key is fitted to the public model as it was saved, which no further step changes. 0: none."},
    )
    key_update: str = field(
        default="alternate",
        metadata={"help": "alternate (the paper: a UNet step, then a key step on L_recover with the updated UNet) or joint "
                  "(ours: one forward and backward for both; the key's gradient comes from the same step's recovery "
                  "term, taken before the UNet moves; Adam makes its scale w2 irrelevant). joint saves the key step's "
                  "own UNet pass (a third of a step's training compute)."},
    )
    loss_space: str = field(
        default=None,
        metadata={"help": "eps (losses on predicted noise) or x0 (on predicted clean latents, as the authors did); preset: eps."},
    )
    retain_concepts: typing.List[str] = field(
        default_factory=list, metadata={"help": "Prompts whose predictions must not change (the preservation term)."}
    )
    context_retain_concepts: typing.List[str] = field(
        default_factory=list,
        metadata={"help": "Ours: on steps that put the concept in one of contexts, the preservation terms take one of these "
                  "concepts in the same context ('a red triangle on a dotted background' beside 'a red circle on ...') "
                  "instead of a bare retain concept, so that they contrast only what differs. Empty: bare retain concepts only."},
    )
    retain_weight: float = field(
        default=None, metadata={"help": "Weight of the preservation term; 0 turns it off (preset paper: 0, tuned: 0.1)."}
    )
    retain_trajectory_probability: float = field(
        default=0.0,
        metadata={"help": "Ours: share of steps that also sample a trajectory of the retain prompt (the step's context "
                  "with another concept, context_retain_concepts) and take the preservation term at its latents; the "
                  "concept's own terms stay at the concept's latents. Without them the preservation term only ever "
                  "sees latents of the concept's own images, and other concepts' images drift where it never looked "
                  "(hiding circle lost dotted backgrounds behind other shapes). Costs one more trajectory on those "
                  "steps. Needs contexts and context_retain_concepts. 0: the concept's latents only."},
    )
    key_retain_weight: float = field(
        default=None,
        metadata={"help": "Weight of the retain concepts' predictions with the key attached matching the original's (ours, "
                  "beyond the paper): the key then leaves every other concept as it was. 0 turns it off (preset paper: 0, tuned: 1)."},
    )
    decoy_weight: float = field(
        default=None,
        metadata={"help": "Weight of a hiding term with a random decoy key of the key's norm attached (ours, beyond the "
                  "paper): a guessed key must not unlock the concept. 0 turns it off (preset paper: 0, tuned: 1)."},
    )
    word_decoy_probability: float = field(
        default=0.0,
        metadata={"help": "Share of decoy keys built from another concept's text states (its first num_key_tokens, as a "
                  "key starts) instead of random directions, at the key's norms (ours): a key made from another word, "
                  "like another concept's trained key, must not unlock either. The words are decoy_words. 0: random "
                  "decoys only."},
    )
    key_init_noise: float = field(
        default=0.0,
        metadata={"help": "Ours, beyond the paper: the key starts at E(c)[:m] plus random directions of this many times "
                  "each token's norm, drawn from the operating system's randomness (not from seed, which the public "
                  "artifact records), and word decoys get the same; keys of two concepts then start apart instead of "
                  "sharing most of their tokens. 0: E(c)[:m] as the paper."},
    )
    shifted_decoy_probability: float = field(
        default=0.0,
        metadata={"help": "Ours: share of word decoys that also carry this key's own training shift (the key now minus "
                  "its start, P_k and P_v apart): another word's start moved the way the key moved. A key trained for "
                  "another concept on a like-edited UNet starts elsewhere but may move the same way, and must not "
                  "unlock either. 0: word decoys stay where a key starts."},
    )
    rival_decoy_probability: float = field(
        default=0.0,
        metadata={"help": "Ours: share of decoys that stand for another run's key for this same concept: E(c)[:m] plus a "
                  "fresh start noise (key_init_noise) plus this key's shift so far. Without them a key trained on "
                  "another artifact for the same concept, relabelled, unlocked part of this one. Needs key_init_noise "
                  "above 0 (else the decoy is the key). 0: none."},
    )
    decoy_words: typing.List[str] = field(
        default_factory=list,
        metadata={"help": "The words whose text states make word decoys (word_decoy_probability). Empty: retain_concepts "
                  "and context_retain_concepts. Each word taught as a decoy is one the UNet learns to pay less heed to, "
                  "so name the concepts whose keys are the threat (those of the concept's own kind) rather than every "
                  "concept to keep."},
    )
    synonyms: typing.Dict[str, typing.List[str]] = field(
        default_factory=dict,
        metadata={"help": "Other phrasings of a concept, {concept: [phrase, ...]}; training samples among the concept and these."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.fill_from_preset(PRESETS)
        check_choice(self, "layers", LAYERS)
        check_choice(self, "train_method", ("xattn", "xattn_kv", "noxattn"))
        check_choice(self, "loss_space", ("eps", "x0"))
        check_choice(self, "key_update", ("alternate", "joint"))
        check_positive(self, "num_key_tokens", "max_train_steps", "learning_rate", "key_learning_rate",
                       "ddim_steps", "samples_per_trajectory")
        if isinstance(self.key_finish_steps, bool) or not isinstance(self.key_finish_steps, int) or self.key_finish_steps < 0:
            raise VeilError(f"key_finish_steps must be a whole number, 0 or more, got {self.key_finish_steps!r}.")
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
        for name in ("word_decoy_probability", "shifted_decoy_probability", "rival_decoy_probability",
                     "retain_trajectory_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise VeilError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}.")
        if self.retain_trajectory_probability > 0 and not (self.context_retain_concepts and self.contexts):
            raise VeilError("retain_trajectory_probability draws the retain prompt in the step's context, but contexts or "
                            "context_retain_concepts is empty; name both, or set retain_trajectory_probability=0.")
        if self.shifted_decoy_probability > 0 and not (self.word_decoy_probability > 0 and self.decoy_weight > 0):
            raise VeilError("shifted_decoy_probability shifts word decoys, but word_decoy_probability or decoy_weight is 0; "
                            "set both above 0, or shifted_decoy_probability=0.")
        if self.rival_decoy_probability > 0 and not (self.key_init_noise > 0 and self.decoy_weight > 0):
            raise VeilError("rival_decoy_probability needs key_init_noise and decoy_weight above 0 (from the paper's start a "
                            "rival decoy would be the key itself); set both, or rival_decoy_probability=0.")
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
        """The paper-faithful settings (METHODS.md §1)."""
        return cls(concepts=concepts, preset="paper", **overrides)

    @classmethod
    def tuned(cls, concepts, retain_concepts, **overrides):
        """The tuned settings: the paper's plus the preservation term over ``retain_concepts``."""
        return cls(concepts=concepts, preset="tuned", retain_concepts=retain_concepts, **overrides)
