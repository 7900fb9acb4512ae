"""What every attack shares: its config, its result, the registry, and the denoising objective.

An attack is given a pipeline with the protected method attached, the concept, and images of the
concept; it returns :class:`Candidate` prompts (prompt embeddings, and for key forging a forged key)
from which the runner generates and scores images. Each attack states its threat model in its class
docstring: what the attacker may read. No attack reads a KPOP key or its file.
"""

import contextlib
import time
import typing
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..architectures.sdxl import pipeline_inputs
from ..config import Settings
from ..errors import VeilError
from ..methods.base import check_positive
from ..registry import unknown_name_error
from ..training.loop import peak_memory_mb
from ..training.prediction import training_target

_ATTACKS = {}


def register_attack(name):
    """Class decorator registering an :class:`Attack` under ``name``."""

    def decorator(cls):
        cls.name = name
        _ATTACKS[name] = cls
        return cls

    return decorator


def list_attacks():
    """Names of the registered attacks, sorted."""
    from . import inversion, key_forging, prompt_search, ring_a_bell  # noqa: F401 - registers them

    return sorted(_ATTACKS)


def get_attack(name):
    """The attack class registered under ``name``; a one-sentence error with the closest name otherwise."""
    names = list_attacks()
    key = str(name).strip().lower().replace("-", "_")
    if key in _ATTACKS:
        return _ATTACKS[key]
    raise unknown_name_error("attack", key, names)


@dataclass
class AttackConfig(Settings):
    """The budget every attack shares. Subclasses set paper defaults and add their own fields."""

    max_train_steps: int = field(default=100, metadata={"help": "Optimisation steps of the attack."})
    learning_rate: float = field(default=1e-2, metadata={"help": "Adam learning rate of what the attack optimises."})
    batch_size: int = field(default=1, metadata={"help": "Concept images (each with its own timestep and noise) per step."})
    eval_draws: int = field(
        default=8, metadata={"help": "Fixed (image, timestep, noise) draws on which the objective is reported before and after."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed for everything the attack draws."})

    def __post_init__(self):
        check_positive(self, "max_train_steps", "learning_rate", "batch_size", "eval_draws")


@dataclass
class Candidate:
    """One prompt an attack proposes. ``prompt_embeds`` is ``(1, tokens, width)``; ``text`` the readable
    prompt where the attack found real tokens; ``key`` a forged ``(P_k, P_v)`` read by ``layers``."""

    label: str
    prompt_embeds: torch.Tensor
    text: typing.Optional[str] = None
    key: typing.Optional[typing.Tuple[torch.Tensor, torch.Tensor]] = None
    layers: typing.Optional[str] = None

    @contextlib.contextmanager
    def installed(self, pipe):
        """Inside the block, ``pipe`` reads this candidate's forged key (a no-op without one)."""
        if self.key is None:
            yield
            return
        from ..methods.kpop import keyed_attention, select_key_sites

        key_tokens, value_tokens = (t.detach().to(pipe.device, pipe.unet.dtype) for t in self.key)
        with keyed_attention(pipe.unet, select_key_sites(pipe.unet, self.layers), key_tokens, value_tokens):
            yield


@dataclass
class AttackResult:
    """What an attack returns: its candidates, its objective before and after, its losses and its cost."""

    attack: str
    concept: str
    candidates: typing.List[Candidate]
    objective: typing.Dict[str, float]
    losses: typing.List[float]
    cost: typing.Dict[str, typing.Any]
    config: typing.Dict[str, typing.Any]

    def to_dict(self):
        """JSON-ready summary (no tensors)."""
        return {
            "attack": self.attack, "concept": self.concept, "config": self.config, "objective": self.objective,
            "cost": self.cost, "candidates": [{"label": c.label, "text": c.text} for c in self.candidates],
            "losses": [round(v, 6) for v in self.losses],
        }

    def tensors(self):
        """``{name: tensor}`` for safetensors: each candidate's prompt embeddings and forged key."""
        out = {}
        for i, c in enumerate(self.candidates):
            out[f"candidate.{i}.prompt_embeds"] = c.prompt_embeds.detach().cpu().float().contiguous()
            if c.key is not None:
                out[f"candidate.{i}.P_k"], out[f"candidate.{i}.P_v"] = (t.detach().cpu().float().contiguous() for t in c.key)
        return out


class Attack:
    """Base class of an attack; subclasses are registered with ``@register_attack(name)``."""

    name = None
    config_class = AttackConfig

    def __init__(self, config=None, **kwargs):
        if config is None:
            config = self.config_class(**kwargs)
        elif isinstance(config, dict):
            config = self.config_class.from_dict({**config, **kwargs})
        elif kwargs:
            raise TypeError("Pass either a config or keyword arguments, not both.")
        self.config = config

    def applies_to(self, method):
        """Whether this attack makes sense against ``method`` (key forging: keyed methods only)."""
        return True

    def run(self, pipe, method, concept, concept_images=None, *, prompt=None, callback=None):
        """Attack ``pipe`` (the protected ``method`` attached) for ``concept``.

        Args:
            pipe: the pipeline with the protected method attached (or the base model, as a reference).
            method: the protected method; only its public config is read (``None`` for the base model).
            concept: the hidden or erased concept.
            concept_images: PIL images or uint8 ``(h, w, 3)`` arrays showing the concept.
            prompt: the prompt naming the concept (default ``"a {concept}"``).
            callback: ``callback(step, candidate)`` at step 0 and after every step; ``candidate`` is the
                attack's candidate as of that step where the attack offers one (key forging), else ``None``.

        Returns:
            :class:`AttackResult`.
        """
        raise NotImplementedError


def concept_prompt(concept, prompt=None):
    """The prompt naming the concept: ``prompt`` if given, else ``"a {concept}"``."""
    return prompt if prompt else f"a {concept}"


# images -> latents -------------------------------------------------------------------------------------
def _as_arrays(images):
    if images is None or (hasattr(images, "__len__") and len(images) == 0):
        raise VeilError("No concept images were given; pass a list of PIL images or uint8 arrays showing the concept.")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    arrays = []
    for image in images:
        if hasattr(image, "convert"):
            image = np.asarray(image.convert("RGB"))
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise VeilError(f"A concept image has shape {image.shape} and dtype {image.dtype}; pass RGB PIL images or uint8 arrays (height, width, 3).")
        arrays.append(image)
    return arrays


@torch.no_grad()
def encode_images(pipe, images):
    """Concept images (PIL or uint8 ``(h, w, 3)`` arrays) as the VAE's scaled latents ``(n, c, h', w')``."""
    from PIL import Image

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    arrays = [np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) if a.shape[:2] != (size, size) else a
              for a in _as_arrays(images)]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (n, 3, size, size) in [-1, 1]
    pixels = pixels.to(pipe.device, pipe.vae.dtype)
    # The posterior mean, not a sample: the attack's targets stay fixed for a given set of images.
    latents = pipe.vae.encode(pixels).latent_dist.mean
    return (latents * pipe.vae.config.scaling_factor).to(pipe.unet.dtype)


class DenoisingObjective:
    """The denoising loss on concept images, ``E_{z0, t, eps} || eps_theta(x_t, t, c) − eps ||²`` with
    ``x_t = sqrt(a_t)·z0 + sqrt(1 − a_t)·eps`` (the DDPM training loss), of whatever ``pipe`` holds.

    Args:
        latents: ``(n, c, h, w)`` concept latents from :func:`encode_images`.
        config: an :class:`AttackConfig` (``batch_size``, ``eval_draws``, ``seed``).
    """

    def __init__(self, pipe, latents, config):
        self.pipe, self.latents = pipe, latents
        self.batch_size = int(config.batch_size)
        self.generator = torch.Generator("cpu").manual_seed(int(config.seed))
        self.fixed = self.draw(int(config.eval_draws), torch.Generator("cpu").manual_seed(int(config.seed) + 10_000))

    def draw(self, size=None, generator=None):
        """``(noisy latents, timesteps, target)`` for ``size`` random (image, timestep, noise) draws."""
        size, generator = size or self.batch_size, generator or self.generator
        scheduler = self.pipe.scheduler
        index = torch.randint(self.latents.shape[0], (size,), generator=generator)
        z0 = self.latents[index.to(self.latents.device)]
        noise = torch.randn(z0.shape, generator=generator).to(z0.device, z0.dtype)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (size,), generator=generator).to(z0.device)
        noisy = scheduler.add_noise(z0, noise, timesteps)
        return noisy, timesteps, training_target(z0, noise, timesteps, scheduler)  # noise, or v on a v-prediction model

    def loss(self, prompt_embeds, draw=None):
        """The loss of ``prompt_embeds`` (``(1, tokens, width)``) on ``draw`` (a fresh random batch by default)."""
        noisy, timesteps, target = draw if draw is not None else self.draw()
        context = prompt_embeds.to(self.pipe.unet.dtype).expand(noisy.shape[0], -1, -1)
        noise_pred = self.pipe.unet(noisy, timesteps, encoder_hidden_states=context).sample
        return F.mse_loss(noise_pred.float(), target.float())

    def fixed_loss(self, prompt_embeds):
        """The loss on the fixed draws (what ``objective`` reports before and after)."""
        # Computed with gradients enabled, like the attack's own steps: inference-time hooks (SLD) act
        # only on sampling calls without gradients, so the loss reported is the loss optimised. Nothing
        # here requires gradients, so no graph is kept.
        with torch.enable_grad():
            return float(self.loss(prompt_embeds.detach(), self.fixed).detach())


# running ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen(pipe):
    """Inside the block no pipeline weight takes gradients (the attack's own tensors do); flags restored after."""
    params = [p for c in pipe.components.values() if isinstance(c, torch.nn.Module) for p in c.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class CostMeter:
    """Wall time, steps and peak memory of one attack."""

    def __init__(self, pipe):
        self.device = pipe.device
        if torch.device(self.device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()

    def record(self, steps):
        return {"seconds": round(time.perf_counter() - self.start, 3), "steps": int(steps),
                "peak_mem_mb": round(peak_memory_mb(self.device), 1), "device": str(self.device)}


def step_callback(callback, make_candidate=None):
    """Adapt an attack's ``callback(step, candidate)`` to :func:`optimise`'s ``callback(step)``; the
    candidate as of that step is built only by attacks that offer one (key forging), else ``None``."""
    if callback is None:
        return None
    return lambda step: callback(step, make_candidate() if make_candidate is not None else None)


def optimise(parameters, step_loss, config, callback=None):
    """Adam on ``parameters`` for ``config.max_train_steps`` steps of ``step_loss()``; returns the losses.

    ``callback(step)`` runs before the first step (step 0) and after each step.
    """
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    losses = []
    if callback is not None:
        callback(0)
    for step in range(1, int(config.max_train_steps) + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss()
        value = float(loss.detach())
        if not np.isfinite(value):
            raise VeilError(f"The attack's loss became {value} at step {step}; lower its learning_rate.")
        loss.backward()
        optimizer.step()
        losses.append(value)
        if callback is not None:
            callback(step)
    return losses


@torch.no_grad()
def generate_from(pipe, candidate, seeds, *, num_inference_steps=20, guidance_scale=3.0):
    """One image per seed from ``candidate`` (its prompt embeddings, its forged key if any)."""
    embeds = candidate.prompt_embeds.to(pipe.device, pipe.unet.dtype).expand(len(seeds), -1, -1)
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    with candidate.installed(pipe):
        return pipe(**pipeline_inputs(pipe, embeds), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    generator=generators).images
