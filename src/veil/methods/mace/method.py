"""MACE: Mass Concept Erasure in Diffusion Models (Lu et al., CVPR 2024)."""

import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import VeilError
from ...registry import register_method
from ...training.hardware import latent_size
from ...training.sampling import PromptCache, encode_prompts
from ..base import phrasings
from ..uce import uce_closed_form
from ..weights import WeightEditMethod, least_squares_projection
from .config import MACEConfig
from .presets import MODEL_PRESETS

PROJECTIONS = ("to_k", "to_v")


def region_attention_loss(maps, tokens, mask):
    """MACE's LoRA loss: the squared attention that the concept's tokens draw inside the concept's region.

    ``Σ_{i ∈ tokens} ‖A_l^i ⊙ M‖²_F`` for each cross-attention layer ``l``, summed over pixels and tokens and
    averaged over layers, heads and images; ``M`` is pooled to each layer's resolution.

    Args:
        maps: cross-attention probabilities, one ``(images, heads, pixels, tokens)`` tensor per layer (square maps).
        tokens: positions of the concept's tokens in the prompt.
        mask: ``(images, H, W)``, the region's coverage of each latent pixel, in [0, 1].
    """
    if not maps:
        raise VeilError("No cross-attention map was recorded; MACE needs a UNet with cross-attention layers.")
    total = 0.0
    for probs in maps:
        side = int(round(probs.shape[2] ** 0.5))
        region = F.adaptive_avg_pool2d(mask[:, None].to(probs.dtype), side).reshape(mask.shape[0], 1, -1, 1)
        total = total + ((probs[..., tokens] * region) ** 2).sum(dim=(2, 3)).mean()
    return total / len(maps)


def token_positions(tokenizer, prompt, phrase):
    """Positions of ``phrase``'s tokens in ``prompt`` as the pipeline tokenizes it (start token at 0)."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    words = tokenizer(phrase, add_special_tokens=False).input_ids
    for start in range(len(ids) - len(words) + 1):
        if words and ids[start : start + len(words)] == words:
            return list(range(start, start + len(words)))
    raise VeilError(f"The prompt {prompt!r} does not hold the tokens of {phrase!r}; check the templates.")


class _Shared:
    """What MACE's cross-attention processors share: each layer's LoRA factors and where its maps go."""

    def __init__(self):
        self.lora = {}  # layer name -> {"to_k": (down, up), "to_v": (down, up)}
        self.record = None  # called with each (images, heads, pixels, tokens) attention map


class _Processor:
    """Cross-attention written out so that its map can be read and its key and value take a LoRA."""

    def __init__(self, name, shared):
        self.name, self.shared = name, shared

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        lora = self.shared.lora.get(self.name)
        if lora:
            key = key + context @ lora["to_k"][0].T @ lora["to_k"][1].T
            value = value + context @ lora["to_v"][0].T @ lora["to_v"][1].T
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, None)
        if self.shared.record is not None:
            self.shared.record(probs.reshape(-1, attn.heads, *probs.shape[1:]))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


@contextlib.contextmanager
def _mace_processors(unet, shared):
    """MACE's processors on every cross-attention layer for the block; the originals back afterwards."""
    originals = unet.attn_processors
    unet.set_attn_processor({k: _Processor(k[: -len(".processor")], shared) if ".attn2." in k else v for k, v in originals.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(originals)


@register_method("mace")
class MACE(WeightEditMethod):
    """Mass Concept Erasure (Lu et al., CVPR 2024, arXiv 2403.06381).

    Three steps, every one an edit of the cross-attention ``to_k``/``to_v``: a closed-form refinement sends the
    token states of prompts holding a concept where the guide's went (so the words around it stop carrying it);
    one rank-``r`` LoRA per concept is trained to take the concept's tokens' attention out of its region in
    images of it; a closed-form fusion folds all LoRAs into one weight per projection.
    """

    kind = "closed_form"
    config_class = MACEConfig
    multi_concept = (
        "One closed-form refinement over every concept, one LoRA per concept, and one closed-form fusion of "
        "all the LoRAs (the paper's form, made for up to 100 concepts)."
    )
    model_presets = MODEL_PRESETS

    def edited_parameter_names(self, unet):
        return [n for n, _ in unet.named_parameters() if any(f"attn2.{p}.weight" in n for p in PROJECTIONS)]

    def _states(self, pipe, prompts):
        """Token states every position after the start token, as UCE uses them."""
        if not prompts:
            return torch.zeros(0, pipe.unet.config.cross_attention_dim, device=pipe.device)
        return encode_prompts(pipe, prompts)[:, 1:].reshape(-1, pipe.unet.config.cross_attention_dim)

    def _prompts(self, concept):
        return [t.format(p) for p in phrasings(self.config, concept) for t in self.config.templates]

    # training images ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _rendered(self, pipe, index):
        """Shapes-world images of concept ``index`` with the renderer's own mask: (latents, prompts, masks)."""
        from ...shapes import model_world

        W = model_world(getattr(pipe, "veil_model_name", "shapes"))  # a shapes build's own world, else the bundled one
        concept = self.config.concepts[index]
        kind, rng = W.CONCEPT_KIND[concept], np.random.default_rng(self.config.seed + 7919 * index)
        options, slot = phrasings(self.config, concept), W.SLOTS
        images, masks, prompts = [], [], []
        for n in range(self.config.images_per_concept):
            parts = {k: concept if k == kind else v[int(rng.integers(len(v)))] for k, v in W.AXES.items()}
            image, alpha = W.render_with_mask(rng=rng, **parts)
            images.append(image)
            masks.append(1.0 - alpha if kind == "background" else alpha)  # a style is the object's: its coverage
            words = {slot[k]: v for k, v in parts.items()}
            words[slot[kind]] = options[n % len(options)]
            prompts.append(W.fill(W.CANONICAL_TEMPLATE, **words))
        pixels = torch.tensor(np.stack(images), dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1.0
        vae = pipe.vae
        latents = vae.encode(pixels.to(pipe.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
        masks = F.adaptive_avg_pool2d(torch.tensor(np.stack(masks), dtype=torch.float32)[:, None], latents.shape[-1])[:, 0]
        phrases = [options[n % len(options)] for n in range(len(prompts))]
        return latents.float(), prompts, phrases, masks.to(pipe.device)

    @torch.no_grad()
    def _generated(self, pipe, index):
        """Images of concept ``index`` generated by the model; the region is where the concept's tokens attend
        (their cross-attention summed over steps and layers, above ``region_threshold`` of its peak)."""
        config = self.config
        options = phrasings(config, config.concepts[index])
        latents, prompts, phrases, masks = [], [], [], []
        generator = torch.Generator("cpu").manual_seed(config.seed + 7919 * index)
        side = latent_size(pipe, config.resolution)
        pixels = side * pipe.vae_scale_factor
        for n in range(config.images_per_concept):
            phrase = options[n % len(options)]
            prompt = config.templates[(n // len(options)) % len(config.templates)].format(phrase)
            tokens = token_positions(pipe.tokenizer, prompt, phrase)
            heat = torch.zeros(1, 1, side, side)

            def record(probs, heat=heat, tokens=tokens):
                cond = probs[-1:, :, :, tokens].float().mean(dim=1).sum(dim=-1).cpu()  # the prompt's half of the batch
                small = int(round(cond.shape[1] ** 0.5))
                heat.add_(F.interpolate(cond.reshape(1, 1, small, small), size=(side, side), mode="bilinear", align_corners=False))

            shared = _Shared()
            shared.record = record
            with _mace_processors(pipe.unet, shared):
                out = pipe(prompt, num_inference_steps=config.generation_steps, generator=generator, output_type="latent",
                           height=pixels, width=pixels)
            latent = out.images if torch.is_tensor(out.images) else torch.as_tensor(np.asarray(out.images))
            heat = heat[0, 0]
            latents.append(latent.float())
            masks.append((heat >= config.region_threshold * heat.max()).float())
            prompts.append(prompt)
            phrases.append(phrase)
        return torch.cat(latents), prompts, phrases, torch.stack(masks).to(pipe.device)

    # the three steps ----------------------------------------------------------------------------------
    def _train_lora(self, pipe, index, data):
        """One LoRA for concept ``index`` on the refined weights: ``{layer: {proj: ΔW}}`` and its last loss."""
        config, unet = self.config, pipe.unet
        latents, prompts, phrases, masks = data
        generator = torch.Generator("cpu").manual_seed(config.seed + 104729 * (index + 1))
        shared, params = _Shared(), []
        weights = dict(unet.named_parameters())
        for name in self.edited_parameter_names(unet):
            layer, proj = name.rsplit(".", 2)[0], name.rsplit(".", 2)[1]
            out, d = weights[name].shape
            down = (torch.randn(config.rank, d, generator=generator) / d**0.5).to(pipe.device).requires_grad_(True)
            up = torch.zeros(out, config.rank, device=pipe.device, requires_grad=True)
            shared.lora.setdefault(layer, {})[proj] = (down, up)
            params += [down, up]
        optimizer = torch.optim.Adam(params, lr=config.learning_rate)
        cache = PromptCache()
        tokens = [token_positions(pipe.tokenizer, p, w) for p, w in zip(prompts, phrases)]
        scheduler, maps, loss = pipe.scheduler, [], torch.zeros(())
        shared.record = maps.append
        flags = {n: p.requires_grad for n, p in unet.named_parameters()}
        unet.requires_grad_(False)
        try:
            with _mace_processors(unet, shared), torch.enable_grad():
                for step in range(config.max_train_steps):
                    i = int(torch.randint(len(prompts), (1,), generator=generator))
                    t = torch.randint(scheduler.config.num_train_timesteps, (1,), generator=generator)
                    noise = torch.randn(latents[i : i + 1].shape, generator=generator).to(latents.device)
                    noisy = scheduler.add_noise(latents[i : i + 1], noise, t.to(latents.device))
                    maps.clear()
                    unet(noisy, t.to(latents.device), encoder_hidden_states=cache(pipe, prompts[i])).sample
                    loss = region_attention_loss(maps, tokens[i], masks[i : i + 1])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        finally:
            maps.clear()
            for n, p in unet.named_parameters():
                p.requires_grad_(flags[n])
        deltas = {f"{layer}.{proj}.weight": (up @ down).detach() for layer, projs in shared.lora.items() for proj, (down, up) in projs.items()}
        return deltas, float(loss.detach())

    def fit(self, pipe):
        config = self.config
        if self.attached_to is pipe:
            self.detach(pipe)
        clock = time.perf_counter()
        region = self._rendered if config.region == "renderer" else self._generated
        data = [region(pipe, i) for i in range(len(config.concepts))]
        seconds = {"images": time.perf_counter() - clock}

        # 1. Closed-form refinement: the concept's prompts (every token, the words around it too) go where the guide's went.
        clock = time.perf_counter()
        with torch.no_grad():
            prompts = [p for c in config.concepts for p in self._prompts(c)]
            erase = self._states(pipe, prompts)
            guide = self._states(pipe, [t.format(config.guide).strip() for c in config.concepts for _ in phrasings(config, c) for t in config.templates])
            preserve = self._states(pipe, [t.format(p) for p in config.preserve_concepts for t in config.templates])
            params = dict(pipe.unet.named_parameters())
            names = self.edited_parameter_names(pipe.unet)
            refined = {n: uce_closed_form(params[n].detach(), erase, guide, preserve, 1.0, config.preserve_scale, config.regularization) for n in names}
        seconds["refine"] = time.perf_counter() - clock

        # 2. One LoRA per concept, each trained on the refined weights.
        clock = time.perf_counter()
        self.edit.edited = dict(sorted(refined.items()))
        self.attach(pipe)
        try:
            trained = [self._train_lora(pipe, i, data[i]) for i in range(len(config.concepts))]
        finally:
            self.detach(pipe)
        seconds["lora"] = time.perf_counter() - clock

        # 3. Closed-form fusion: one weight that gives each concept's prompts what its own LoRA gave them.
        clock = time.perf_counter()
        with torch.no_grad():
            states = [self._states(pipe, self._prompts(c)) for c in config.concepts]
            fused = {}
            for name, weight in refined.items():
                targets = torch.cat([s.double() @ (weight.double() + deltas[name].double()).T for s, (deltas, _) in zip(states, trained)])
                fused[name] = least_squares_projection(weight, torch.cat(states), targets, preserve, 1.0, config.preserve_scale, config.regularization)
        seconds["fuse"] = time.perf_counter() - clock
        self.edit.edited = dict(sorted(fused.items()))
        return {
            "edited_tensors": len(fused),
            "lora_final_loss": {c: round(loss, 6) for c, (_, loss) in zip(config.concepts, trained)},
            "stage_seconds": {k: round(v, 3) for k, v in seconds.items()},
        }
