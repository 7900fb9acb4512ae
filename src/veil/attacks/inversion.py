"""Concept inversion (Pham, Marshall, Cohen, Hegde, ICLR 2024, arXiv 2308.01508): textual inversion
against the protected model."""

from dataclasses import dataclass, field

import torch

from ..errors import VeilError
from ..methods.base import check_positive
from .base import (
    Attack,
    AttackConfig,
    AttackResult,
    Candidate,
    CostMeter,
    DenoisingObjective,
    encode_images,
    frozen,
    optimise,
    step_callback,
    register_attack,
)
from ..token_slots import PromptTemplate, encode, input_table, word_ids


@dataclass
class ConceptInversionConfig(AttackConfig):
    """Textual inversion's budget: one new token, learning rate 5e-3, a few images per step."""

    max_train_steps: int = field(default=1000, metadata={"help": "Optimisation steps of the new token's embedding."})
    learning_rate: float = field(default=5e-3, metadata={"help": "Adam learning rate of the new token's embedding (textual inversion: 5e-3)."})
    batch_size: int = field(default=4, metadata={"help": "Concept images per step."})
    num_vectors: int = field(default=1, metadata={"help": "Token vectors the new word is made of."})
    template: str = field(default="a {}", metadata={"help": "The prompt the new word is used in; {} marks its place."})
    initializer: str = field(default="object", metadata={"help": "Word whose token embedding the new word starts from."})

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "num_vectors")
        if self.template.count("{}") != 1:
            raise VeilError(f"template must hold one {{}} where the new word goes, e.g. 'a photo of {{}}', got {self.template!r}.")
        if not str(self.initializer).strip():
            raise VeilError("initializer is empty; give a word to start the new token from, e.g. initializer=object.")


@register_attack("concept_inversion")
class ConceptInversion(Attack):
    """Learn the token embedding of a new word on images of the concept with the protected model's own
    denoising loss (textual inversion), then prompt with it. Nothing of the model is trained.

    Threat model: white box on the *protected* (public) model — gradients through its UNet and
    text encoder — plus images of the concept; neither the original weights nor a KPOP key.
    Inference-time methods that act only while sampling (SLD) are met at generation only.

    Example:
        >>> result = ConceptInversion(max_train_steps=500).run(pipe, method, "circle", images)
    """

    config_class = ConceptInversionConfig

    def run(self, pipe, method, concept, concept_images=None, *, prompt=None, callback=None):
        config = self.config
        meter = CostMeter(pipe)
        prefix, suffix = config.template.split("{}")
        with frozen(pipe):
            objective = DenoisingObjective(pipe, encode_images(pipe, concept_images), config)
            template = PromptTemplate(pipe.tokenizer, prefix=prefix, suffix=suffix, num_slots=config.num_vectors)
            start = word_ids(pipe.tokenizer, config.initializer)
            if not start:
                raise VeilError(f"The initializer {config.initializer!r} has no tokens; give an ordinary word.")
            init = input_table(pipe)[torch.tensor(start, device=pipe.device)].float().mean(0)
            vectors = torch.nn.Parameter(init.expand(config.num_vectors, -1).clone())
            with torch.no_grad():
                before = objective.fixed_loss(encode(pipe, template, vectors=vectors))
            losses = optimise([vectors], lambda: objective.loss(encode(pipe, template, vectors=vectors)), config, callback=step_callback(callback))
            with torch.no_grad():
                final = encode(pipe, template, vectors=vectors).detach()
                after = objective.fixed_loss(final)
        candidate = Candidate(label="concept inversion", prompt_embeds=final, text=config.template.format("<inverted>"))
        return AttackResult(
            attack=self.name, concept=concept, candidates=[candidate], objective={"before": before, "after": after},
            losses=losses, cost=meter.record(len(losses)), config=config.to_dict(),
        )
