"""The method contract every concept hiding / erasure method implements.

The training loop, the artifact and the command line know only this contract (docs/architecture.md):
``attach`` / ``detach`` / ``disabled``; ``stages`` / ``set_stage`` / ``optimizer_groups`` / ``optimizer_class`` / ``make_batch`` / ``loss`` /
``after_step`` for trained methods, ``fit`` for closed-form ones; ``state_dict`` / ``checkpoint_state_dict`` /
``load_state_dict`` / ``extra_files`` / ``extra_manifest`` for persistence. :func:`veil.fit` runs a method whole.
"""

import contextlib
import typing
from dataclasses import dataclass, field

import torch

from ..config import Settings
from ..errors import VeilError


def check_positive(config, *names):
    """Raise a one-sentence error for the first field in ``names`` that is not > 0."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise VeilError(f"{name.replace('_', ' ')} must be greater than 0, got {value!r}.")


def check_choice(config, name, choices):
    value = getattr(config, name)
    if value not in choices:
        raise VeilError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")


@dataclass
class MethodConfig(Settings):
    """Fields every method shares. Subclasses add their own, each with help text."""

    concepts: typing.List[str] = field(
        default_factory=list, metadata={"help": "What to hide or erase: words or phrases, one per concept."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed for everything the method draws."})

    def __post_init__(self):
        if isinstance(self.concepts, str):
            self.concepts = [self.concepts]
        self.concepts = [str(c).strip() for c in self.concepts]
        if not self.concepts or any(not c for c in self.concepts):
            raise VeilError("The concept is empty; give the word or phrase to erase, e.g. --concept circle.")
        twice = next((c for i, c in enumerate(self.concepts) if c in self.concepts[:i]), None)
        if twice is not None:
            raise VeilError(f"The concept {twice!r} is given twice; name each concept once.")


def check_synonyms(config):
    """Normalise ``config.synonyms`` to ``{concept: [phrase, ...]}`` over the config's own concepts."""
    if not isinstance(config.synonyms, dict):
        raise VeilError(f"synonyms must map a concept to its other phrasings, e.g. {{circle: [disc]}}, got {config.synonyms!r}.")
    synonyms = {}
    for concept, phrases in config.synonyms.items():
        if concept not in config.concepts:
            raise VeilError(f"synonyms names {concept!r}, which is not one of the concepts ({', '.join(map(repr, config.concepts))}).")
        phrases = [phrases] if isinstance(phrases, str) else list(phrases)
        synonyms[concept] = [str(p).strip() for p in phrases if str(p).strip() and str(p).strip() != concept]
    config.synonyms = synonyms


def check_templates(config, method):
    """Normalise ``config.templates`` to a list of prompts holding exactly one ``{}`` each (UCE, MACE)."""
    if isinstance(config.templates, str):
        config.templates = [config.templates]
    config.templates = [str(t) for t in config.templates]
    bad = [t for t in config.templates if t.count("{}") != 1]
    if not config.templates or bad:
        raise VeilError(f"Each {method} template needs exactly one {{}} where the concept goes, got {(bad or ['(none)'])[0]!r}.")


def check_preserve_scale(config):
    """Refuse a negative ``preserve_scale`` (None, where a config allows it, means its own default)."""
    if config.preserve_scale is not None and config.preserve_scale < 0:
        raise VeilError(f"preserve scale must be 0 or more, got {config.preserve_scale!r}.")


def phrasings(config, concept):
    """The concept and its synonyms, the concept first."""
    return [concept] + list(config.synonyms.get(concept, []))


class Draw(typing.NamedTuple):
    """What one training trajectory follows (:meth:`ESDSamplingConfig.draw_sample`)."""

    concept: int  # index into the config's concepts
    context: typing.Optional[str]  # the context template, or None for the phrase alone
    prompt: str  # the phrase, in the context if any
    anchor: str  # the hiding / erasing target's anchor: the empty prompt, or the context with context_guide
    t_encs: typing.List[int]  # DDIM step indices whose latents are trained on


@dataclass
class ESDSamplingConfig:
    """Fields of ESD sampling (docs/methods/esd.md), shared by ESD, KPOP and DuMo configs."""

    negative_guidance: float = field(default=1.0, metadata={"help": "eta: how far past the empty prompt the target goes."})
    start_guidance: float = field(default=3.0, metadata={"help": "Classifier-free guidance of the partial DDIM trajectories."})
    ddim_steps: int = field(default=50, metadata={"help": "N: DDIM steps of the sampling schedule."})
    samples_per_trajectory: int = field(
        default=4, metadata={"help": "Training samples (distinct t_enc) taken from one DDIM trajectory."}
    )
    contexts: typing.List[str] = field(
        default_factory=list, metadata={"help": "Prompt templates with {} where the concept goes, e.g. 'a {} in a park'."}
    )
    context_probability: float = field(
        default=0.5, metadata={"help": "Share of steps that put the concept in one of contexts (when there are any)."}
    )
    context_guide: str = field(
        default="", metadata={"help": "What takes the concept's place in a context's anchor (default: nothing)."}
    )
    trajectory_batch: int = field(
        default=1, metadata={"help": "Trajectories sampled at once, one used per step (1: as published)."}
    )

    def check_sampling(self):
        check_positive(self, "ddim_steps", "samples_per_trajectory", "trajectory_batch")
        self.samples_per_trajectory = min(self.samples_per_trajectory, self.ddim_steps)
        if isinstance(self.contexts, str):
            self.contexts = [self.contexts]
        self.contexts = [str(c) for c in self.contexts]
        for context in self.contexts:
            if context.count("{}") != 1 or "{" in context.replace("{}", "") or "}" in context.replace("{}", ""):
                raise VeilError(f"Context {context!r} must hold exactly one {{}} where the concept goes, e.g. 'a {{}} in a park'.")
        if not 0.0 <= self.context_probability <= 1.0:
            raise VeilError(f"context_probability must lie in [0, 1], got {self.context_probability!r}.")

    def draw_context(self, generator):
        """The context of one training step: one of ``contexts`` with probability ``context_probability``,
        else ``None`` (the phrase alone)."""
        if not self.contexts or float(torch.rand(1, generator=generator)) >= self.context_probability:
            return None
        return self.contexts[int(torch.randint(len(self.contexts), (1,), generator=generator))]

    @staticmethod
    def place(context, phrase):
        """``phrase`` in ``context`` (``None``: the phrase alone), with single spaces; an "a" or "an" just before
        the slot follows the phrase's first letter ('a {}' with 'orb' is 'an orb')."""
        if context is None:
            return phrase
        before, after = context.split("{}")
        words = before.split()
        if words and phrase.strip() and words[-1].lower() in ("a", "an"):
            article = "an" if phrase.strip()[0].lower() in "aeiou" else "a"
            words[-1] = article.capitalize() if words[-1][0].isupper() else article
        return " ".join((" ".join(words) + " " + phrase + after).split())

    def draw_prompt(self, phrase, generator):
        """``(context, prompt, anchor)`` of one training step: no context, the phrase alone and the empty
        prompt, or, with probability ``context_probability``, a random context, the phrase in it and that
        context with ``context_guide`` (by default nothing) in its place."""
        context = self.draw_context(generator)
        return context, self.place(context, phrase), ("" if context is None else self.place(context, self.context_guide))

    def draw_sample(self, generator, phrases="never"):
        """What one training trajectory follows, as a :class:`Draw`: a concept at random; the concept itself
        (``phrases="never"``), one of its phrasings (``"always"``: a draw even when it has no synonym) or one of
        them when it has synonyms (``"several"``); alone or in a context (:meth:`draw_prompt`); and
        ``samples_per_trajectory`` distinct DDIM step indices."""
        index = int(torch.randint(len(self.concepts), (1,), generator=generator))
        phrase = self.concepts[index]
        if phrases != "never":
            options = phrasings(self, phrase)
            if phrases == "always" or len(options) > 1:
                phrase = options[int(torch.randint(len(options), (1,), generator=generator))]
        context, prompt, anchor = self.draw_prompt(phrase, generator)
        t_encs = torch.randperm(self.ddim_steps, generator=generator)[: self.samples_per_trajectory].tolist()
        return Draw(index, context, prompt, anchor, t_encs)


@dataclass(frozen=True)
class Stage:
    """One training stage: the name :meth:`Method.set_stage` takes and its number of optimizer steps."""

    name: str
    steps: int


MIXED_PRECISION = ("no", "bf16", "fp16")
ATTENTION = ("sdpa", "eager")


@dataclass
class TrainingConfig:
    """How a trained method runs on its hardware (not what it learns), shared by ESD, KPOP and DuMo; the same
    names are command-line flags (``--resolution``, ``--batch-size``, ...)."""

    resolution: int = field(
        default=None,
        metadata={"help": "Training image side in pixels (SD: a multiple of 64); none: the model's own."},
    )
    batch_size: int = field(
        default=1,
        metadata={"help": "Trajectories per training step, each with its own noise (x samples_per_trajectory latents)."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute UNet activations in the backward pass: less memory, about 1/3 more compute."},
    )
    mixed_precision: str = field(
        default="no",
        metadata={"help": "no, bf16 or fp16 (CUDA only): frozen weights and every pass in it; trained ones stay float32."},
    )
    attention: str = field(
        default="sdpa", metadata={"help": "sdpa (PyTorch's scaled_dot_product_attention) or eager (the plain softmax)."}
    )

    def check_training(self):
        if self.resolution is not None:
            check_positive(self, "resolution")
        check_positive(self, "batch_size")
        check_choice(self, "mixed_precision", MIXED_PRECISION)
        check_choice(self, "attention", ATTENTION)
        if not isinstance(self.gradient_checkpointing, bool):
            raise VeilError(f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}.")


class Method:
    """Base class of a method. Subclasses are registered with ``@register_method(name)``.

    Kinds: ``"trained"`` methods supply ``make_batch`` and ``loss`` for the shared training loop;
    ``"closed_form"`` methods implement ``fit``; ``"inference"`` methods only hook the sampler.
    """

    name = None
    kind = "trained"
    config_class = MethodConfig
    #: ``{model name: {field: value or function of the concepts}}``, read by :func:`veil.methods.presets.preset_for`.
    model_presets = {}
    #: The optimizer the loop builds for each phase of :meth:`optimizer_groups`.
    optimizer_class = torch.optim.Adam
    #: One sentence: how several concepts (``concepts=[a, b]``, ``--concept a --concept b``) go into one artifact;
    #: ``veil ls methods -v`` shows it. A method that takes one concept only leaves it ``None`` and sets
    #: ``single_concept_refusal`` instead.
    multi_concept = None
    #: One sentence refusing several concepts (with what to do instead), for a method that takes one concept only;
    #: the method's constructor raises it for a config of several concepts.
    single_concept_refusal = None
    #: Why a stock diffusers pipeline folder cannot hold what the method does (``veil export --format
    #: pipeline`` refuses with it); ``None`` when the method's whole effect is an edit of the weights.
    pipeline_export_refusal = None

    def __init__(self, config=None, **kwargs):
        if config is None:
            config = self.config_class(**kwargs)
        elif kwargs:
            raise TypeError("Pass either a config or keyword arguments, not both.")
        if self.single_concept_refusal and len(config.concepts) > 1:
            raise VeilError(self.single_concept_refusal)
        self.config = config
        self.attached_to = None

    # installation -------------------------------------------------------------------------------
    def attach(self, pipe):
        """Install into ``pipe``; idempotent; the identity until trained."""
        raise NotImplementedError

    def detach(self, pipe):
        """Remove from ``pipe``; its outputs are bit-for-bit the original again."""
        raise NotImplementedError

    @contextlib.contextmanager
    def disabled(self, pipe):
        """Inside the block ``pipe`` behaves as the original (the frozen teacher)."""
        raise NotImplementedError
        yield  # pragma: no cover

    # training -------------------------------------------------------------------------------------
    def trainable_parameters(self):
        return []

    def optimizer_groups(self):
        """``{phase: [param group dicts]}``; the loop makes one optimizer per phase and steps them in order."""
        return {"main": [{"params": self.trainable_parameters(), "lr": self.config.learning_rate}]}

    def make_batch(self, pipe, generator):
        """Draw one training batch (no grad); all randomness from ``generator``."""
        raise NotImplementedError

    def loss(self, pipe, batch, phase="main"):
        raise NotImplementedError

    def fit(self, pipe):
        """Closed-form methods compute their weights here."""
        raise NotImplementedError(f"{type(self).__name__} is trained with veil's training loop, not fit().")

    def after_step(self, phase):
        """Called after each optimizer step (clamps, projections)."""

    def cast_frozen(self, dtype, keep=True):
        """Put the frozen tensors the method keeps outside the pipeline's modules (a weight edit's originals, the
        frozen teacher) in ``dtype`` for a mixed-precision run; returns ``restore()``, which puts them back (with
        ``keep=False`` no copy is kept and they stay in ``dtype``)."""
        return lambda: None

    def stages(self):
        """The training stages, in order, each a :class:`Stage` with its step count (DuMo: EPR, then TLMO);
        :func:`veil.fit` runs them one after another."""
        return [Stage("main", int(self.config.max_train_steps))]

    def set_stage(self, stage):
        """Switch what ``optimizer_groups`` / ``make_batch`` / ``loss`` refer to, by the stage's name."""

    # persistence ------------------------------------------------------------------------------------
    def state_dict(self):
        """Tensors the artifact stores, keys prefixed by component (``unet.``, ``dumo.<concept>.``)."""
        return {}

    def secret_parameters(self):
        """Trained parameters that are secret (KPOP's key): a checkpoint keeps their optimizer state (Adam's moments
        follow the parameter) with the method's secrets, in ``checkpoint_state_dict(private)``, not beside it."""
        return []

    def checkpoint_state_dict(self, private=None):
        """Tensors a training checkpoint holds to resume exactly: ``state_dict()`` plus anything private
        to training (KPOP's key) and ``private`` (``{name: tensor}``, the optimizer state of
        :meth:`secret_parameters`) as ``private.<name>``, kept as the method keeps its secrets; never written to the
        artifact."""
        return {**self.state_dict(), **{f"private.{name}": t for name, t in (private or {}).items()}}

    def load_checkpoint(self, tensors, where="this checkpoint"):
        """Load ``checkpoint_state_dict()`` tensors; returns their ``private`` part, ``{name: tensor}``."""
        private = {name[len("private."):]: t for name, t in tensors.items() if name.startswith("private.")}
        self.load_state_dict({name: t for name, t in tensors.items() if not name.startswith("private.")})
        return private

    def load_state_dict(self, state_dict):
        """Load ``state_dict()`` or ``checkpoint_state_dict()`` tensors."""
        raise NotImplementedError

    def extra_files(self):
        """``{file name: bytes}`` written beside the artifact's weights (e.g. DuMo's ``time_scale.npy``)."""
        return {}

    def extra_manifest(self):
        """Extra JSON-serialisable fields for the artifact manifest (e.g. key fingerprints)."""
        return {}

    def sampling_warning(self, num_inference_steps):
        """A sentence when sampling with ``num_inference_steps`` leaves the method without effect, else ``None``."""
        return None

class HookMethod(Method):
    """An inference-time method installed as forward hooks on a stock pipeline (SLD, SAFREE): nothing is trained
    or stored, ``detach`` removes the hooks (the pipeline is bit for bit the original) and ``disabled()`` makes
    them pass everything through. Subclasses put their hook handles in ``self._handles`` and honour
    ``self._bypass``."""

    kind = "inference"

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self._handles = []
        self._bypass = False

    def remove_hooks(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.attached_to = None

    @contextlib.contextmanager
    def disabled(self, pipe):
        self._bypass = True
        try:
            yield
        finally:
            self._bypass = False

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        if state_dict:
            raise ValueError(f"{type(self).__name__} stores no tensors.")
