"""Key forging against KPOP: learn one's own ``(P_k, P_v)`` from the public artifact and concept images."""

from dataclasses import dataclass, field

import torch

from ..architectures.sdxl import token_states
from ..errors import VeilError
from ..methods.base import check_choice
from ..training.sampling import encode_prompts
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


@dataclass
class KeyForgingConfig(AttackConfig):
    """The key holder's own budget (docs/attacks.md): 1000 steps at the key learning rate 1e-3."""

    max_train_steps: int = field(default=1000, metadata={"help": "Optimisation steps of the forged key (KPOP trains its key for 1000)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate of the forged key (KPOP's key learning rate: 1e-3)."})
    batch_size: int = field(default=4, metadata={"help": "Concept images per step."})
    init: str = field(
        default="concept",
        metadata={"help": "concept: E(c)[:m], KPOP's published initialisation (the attacker knows the recipe); "
                  "random: Gaussian rows of the same norm."},
    )

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "init", ("concept", "random"))


def public_key_shape(method):
    """``(layers, m)`` of a keyed method, read from its public config (what the artifact's manifest holds)."""
    config = getattr(method, "config", None)
    layers, tokens = getattr(config, "layers", None), getattr(config, "num_key_tokens", None)
    if layers is None or tokens is None:
        name = getattr(method, "name", type(method).__name__)
        raise VeilError(f"Key forging attacks keyed artifacts (kpop), not {name!r}; choose another attack.")
    return layers, int(tokens)


@register_attack("key_forging")
class KeyForging(Attack):
    """Learn a forged key ``(P_k, P_v)`` — ``m`` tokens × text width, read by the artifact's layers — with
    the denoising loss of the public model on images of the concept, prompted with the concept.

    Threat model: the public KPOP artifact (its UNet delta and manifest: layers, ``m``, the published
    recipe) and images of the concept. Not the key or its file, not the original weights: without
    the original model's predictions the attacker cannot use KPOP's recovery loss and falls back on
    the denoising loss. Only ``method.config`` is read; the key is never touched.

    Example:
        >>> curve = forging_curve(pipe, method, "circle", images, classify, eval_steps=[0, 100, 1000])
    """

    config_class = KeyForgingConfig

    def applies_to(self, method):
        config = getattr(method, "config", None)
        return getattr(config, "layers", None) is not None and getattr(config, "num_key_tokens", None) is not None

    def run(self, pipe, method, concept, concept_images=None, *, prompt=None, callback=None):
        from ..methods.kpop import keyed_attention, select_key_sites

        config = self.config
        layers, tokens = public_key_shape(method)
        meter = CostMeter(pipe)
        sites = select_key_sites(pipe.unet, layers)
        with frozen(pipe):
            objective = DenoisingObjective(pipe, encode_images(pipe, concept_images), config)
            prompt_embeds = encode_prompts(pipe, [concept_prompt(concept, prompt)])
            init = token_states(pipe, encode_prompts(pipe, [concept]))[0].float()  # (tokens, width)
            init = init[torch.arange(tokens) % init.shape[0]]  # KPOP: E(c)[:m], repeated if shorter
            if config.init == "random":
                generator = torch.Generator("cpu").manual_seed(int(config.seed))
                noise = torch.randn(init.shape, generator=generator).to(init.device)
                init = noise * (init.norm() / noise.norm())
            key_tokens, value_tokens = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())

            without_key = objective.fixed_loss(prompt_embeds)

            def candidate():
                return Candidate(label="forged key", prompt_embeds=prompt_embeds.detach(), layers=layers,
                                 key=(key_tokens.detach().clone(), value_tokens.detach().clone()))

            # The forged key stays installed for the whole run (the processors cast it at each call), so
            # that a backward pass that re-runs the forward (gradient checkpointing) sees it too.
            with keyed_attention(pipe.unet, sites, key_tokens, value_tokens):
                before = objective.fixed_loss(prompt_embeds)
                losses = optimise([key_tokens, value_tokens], lambda: objective.loss(prompt_embeds), config,
                                  callback=step_callback(callback, candidate))
                after = objective.fixed_loss(prompt_embeds)
        return AttackResult(
            attack=self.name, concept=concept, candidates=[candidate()],
            objective={"before": before, "after": after, "without_key": without_key},
            losses=losses, cost=meter.record(len(losses)), config=config.to_dict(),
        )
