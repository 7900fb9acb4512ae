"""Adversarial prompt search in the manner of UnlearnDiffAtk (Zhang et al., ECCV 2024, arXiv 2310.11868)."""

from dataclasses import dataclass, field

import torch

from ..methods.base import check_choice, check_positive
from .base import (
    Attack,
    AttackConfig,
    AttackResult,
    Candidate,
    CostMeter,
    DenoisingObjective,
    concept_prompt,
    encode_images,
    frozen,
    optimise,
    step_callback,
    register_attack,
)
from ..token_slots import PromptTemplate, Vocabulary, encode, input_table, word_ids


@dataclass
class PromptSearchConfig(AttackConfig):
    """UnlearnDiffAtk's budget: 5 prepended tokens, 40 steps, learning rate 0.01, one image per step."""

    max_train_steps: int = field(default=40, metadata={"help": "Optimisation steps (UnlearnDiffAtk: 40)."})
    learning_rate: float = field(default=1e-2, metadata={"help": "Adam learning rate of the token vectors (UnlearnDiffAtk: 0.01)."})
    num_tokens: int = field(default=5, metadata={"help": "Adversarial tokens prepended to the concept prompt (UnlearnDiffAtk: 5)."})
    mode: str = field(
        default="discrete",
        metadata={"help": "discrete: real tokens (nearest vocabulary rows, gradient taken at the projected prompt); "
                  "soft: free vectors in token-embedding space."},
    )
    ban_concept_tokens: bool = field(default=False, metadata={"help": "Keep the concept's own tokens out of the adversarial tokens."})

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "mode", ("discrete", "soft"))
        check_positive(self, "num_tokens")


@register_attack("prompt_search")
class PromptSearch(Attack):
    """Optimise ``num_tokens`` tokens prepended to the concept prompt so that the protected model's
    denoising loss on images of the concept is minimal; then draw from the found prompt.

    Threat model: white box on the *protected* (public) model — its UNet, text encoder and VAE, and
    gradients through them — plus images of the concept. The attacker has neither the original
    weights nor, for KPOP, the key. Inference-time methods that act only while sampling (SLD) are
    not differentiated through; their effect is met at generation.

    Example:
        >>> result = PromptSearch(max_train_steps=40).run(pipe, method, "circle", images)
        >>> result.candidates[0].text
    """

    config_class = PromptSearchConfig

    def run(self, pipe, method, concept, concept_images=None, *, prompt=None, callback=None):
        config = self.config
        meter = CostMeter(pipe)
        prompt = concept_prompt(concept, prompt)
        with frozen(pipe):
            objective = DenoisingObjective(pipe, encode_images(pipe, concept_images), config)
            template = PromptTemplate(pipe.tokenizer, suffix=prompt, num_slots=config.num_tokens)
            banned = word_ids(pipe.tokenizer, concept) if config.ban_concept_tokens else ()
            vocabulary = Vocabulary(pipe, banned)
            generator = torch.Generator("cpu").manual_seed(int(config.seed))
            # Start from random real tokens, as UnlearnDiffAtk does.
            start = vocabulary.random(config.num_tokens, generator)
            vectors = torch.nn.Parameter(input_table(pipe)[start].float().clone())
            discrete = config.mode == "discrete"

            def embeds(soft):
                if discrete:
                    return encode(pipe, template, token_ids=vocabulary.project(soft))
                return encode(pipe, template, vectors=soft)

            with torch.no_grad():
                reference = objective.fixed_loss(encode(pipe, PromptTemplate(pipe.tokenizer, suffix=prompt)))
                before = objective.fixed_loss(embeds(vectors))

            def step_loss():
                used = vocabulary.straight_through(vectors) if discrete else vectors
                return objective.loss(encode(pipe, template, vectors=used))

            losses = optimise([vectors], step_loss, config, callback=step_callback(callback))
            with torch.no_grad():
                final = embeds(vectors).detach()
                after = objective.fixed_loss(final)
        text = template.text(vocabulary.project(vectors)) if discrete else None
        candidate = Candidate(label=f"prompt search ({config.mode})", prompt_embeds=final, text=text)
        return AttackResult(
            attack=self.name, concept=concept, candidates=[candidate],
            objective={"before": before, "after": after, "prompt_alone": reference},
            losses=losses, cost=meter.record(len(losses)), config=config.to_dict(),
        )
