"""SAFREE: training-free and adaptive guard for safe text-to-image generation (Yoon et al., ICLR 2025)."""

import functools
import math

import torch

from ...registry import register_method
from ..base import HookMethod, phrasings
from .config import SAFREEConfig
from .presets import MODEL_PRESETS

# The self-validating filter's sigmoid: slope k and midpoint (of 10·beta) of the authors' SD 1.4 run.
FILTER_SLOPE, FILTER_MIDPOINT = 2.5, 5.333
MASK_TOKEN_ID = 0  # what a masked token becomes when the prompt is re-encoded without it
CACHE_SIZE = 256  # prompts whose projected states are remembered between encoding and sampling


def concept_projection(vectors):
    """``(d, d)`` float64 projection onto the span of the rows of ``vectors`` (``(k, d)``)."""
    e = vectors.double().T
    return e @ torch.linalg.pinv(e.T @ e) @ e.T


def safe_token_states(states, masked_ends, concept_proj, alpha):
    """SAFREE's projection of one prompt's token states away from the concept subspace.

    Args:
        states: ``(tokens, d)`` the prompt's token states; position 0 is the start token and positions
            ``1..n`` its words' tokens.
        masked_ends: ``(n, d)`` the end token's state of the prompt re-encoded with token ``i`` masked.
        concept_proj: ``(d, d)`` projection onto the concept subspace (:func:`concept_projection`).
        alpha: a token triggers when masking it leaves the prompt ``1 + alpha`` times further from the
            concept subspace than masking any other token does on average (one token alone always triggers).

    Returns:
        ``(safe, triggers, projected)``: the states with every trigger token replaced by its projection
        ``(I − P_C) P_in s`` (``P_in``: the span of ``masked_ends``), the ``(n,)`` trigger mask, and every
        position's projection (the self-validating filter compares them with ``states``).
    """
    n, d = masked_ends.shape
    outside = torch.eye(d, dtype=torch.float64, device=states.device) - concept_proj.to(states.device)
    distance = (masked_ends.double() @ outside).norm(dim=1)
    others = (distance.sum() - distance) / (n - 1) if n > 1 else torch.full_like(distance, float("nan"))
    triggers = ~(distance < (1 + alpha) * others)
    projected = (states.double() @ (outside @ concept_projection(masked_ends)).T).to(states.dtype)
    safe = states.clone()
    words = safe[1 : n + 1]
    words[triggers] = projected[1 : n + 1][triggers]
    return safe, triggers, projected


def safe_steps(states, projected, real_tokens, max_steps):
    """The self-validating filter: ``round(max_steps · σ(2k(10β − m)))`` with ``β = 1 − mean cos(projected, states)``
    over the prompt's real tokens; the projected states are used for sampling steps ``0..steps``."""
    beta = 1 - float(torch.nn.functional.cosine_similarity(projected[:real_tokens].double(), states[:real_tokens].double()).mean())
    return round(max_steps / (1 + math.exp(-2 * FILTER_SLOPE * (10 * beta - FILTER_MIDPOINT))))


def low_frequency_reattention(safe, original, scale):
    """Latent re-attention of ``(b, c, h, w)`` features: in the 2 × 2 lowest-frequency box of their 2-D Fourier
    transform, the components of ``safe`` that are not below the ``original`` prompt's (real part) are multiplied
    by ``scale``; the rest is unchanged."""
    h, w = safe.shape[-2:]
    if h < 2 or w < 2:
        return safe
    spectrum = lambda x: torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))  # noqa: E731
    fs, fo = spectrum(safe), spectrum(original)
    box = (..., slice(h // 2 - 1, h // 2 + 1), slice(w // 2 - 1, w // 2 + 1))
    low = fs[box]
    fs[box] = torch.where((fo[box] - low).real > 0, low, low * scale)
    return torch.fft.ifftn(torch.fft.ifftshift(fs, dim=(-2, -1)), dim=(-2, -1)).real.to(safe.dtype)


@register_method("safree")
class SAFREE(HookMethod):
    """SAFREE, a training-free guard (Yoon et al., ICLR 2025, arXiv 2410.12761), as a hook on a stock pipeline.

    Prompt tokens that pull the prompt towards the concept's subspace are projected out of it (and into
    the prompt's own input space), for as many early sampling steps as the self-validating filter gives,
    while the skip features' low frequencies that the projected prompt raises are damped (latent
    re-attention). The artifact holds only the config.
    """

    config_class = SAFREEConfig
    multi_concept = (
        "One concept subspace spanned by every concept's phrasings: a prompt token near any of them is projected out."
    )
    model_presets = MODEL_PRESETS
    pipeline_export_refusal = "changes the prompt's states and the UNet's features at each sampling step instead of the weights"

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self._encoding = False
        self._cache = []  # (original states, safe states, steps) of prompts with a trigger token
        self._state = None
        self._extended = None  # (batch, rows re-attended) while a sampling call carries the original prompt too

    # installation -------------------------------------------------------------------------------
    def attach(self, pipe):
        if self.attached_to is pipe:
            return
        phrases = [p for c in self.config.concepts for p in phrasings(self.config, c)] + list(self.config.concept_space)
        ids, mask = self._tokenize(pipe, phrases)
        self._concept_proj = concept_projection(self._end_states(pipe, ids, mask))
        self._pipe = pipe
        self._handles = [
            pipe.text_encoder.register_forward_hook(self._text_hook, with_kwargs=True),
            pipe.unet.register_forward_pre_hook(self._unet_pre_hook, with_kwargs=True),
            pipe.unet.register_forward_hook(self._unet_hook, with_kwargs=True),
        ]
        if self.config.re_attention:
            for block, scale in self._reattention_blocks(pipe.unet):
                self._handles.append(block.register_forward_pre_hook(functools.partial(self._skip_hook, scale), with_kwargs=True))
        self._cache, self._state, self._extended = [], None, None
        self.attached_to = pipe

    def detach(self, pipe):
        if self.attached_to is not pipe:
            return
        self.remove_hooks()
        self._cache, self._extended = [], None

    def _reattention_blocks(self, unet):
        """``(up block, scale)``: s1 for every up block but the last two (the deepest ones), s2 for the one before
        the last; the last (finest) is left alone. On SD 1.x: the 1280-channel blocks s1, the 640-channel one s2."""
        s1, s2 = self.config.re_attention_scales
        blocks = list(unet.up_blocks)
        return [(block, s1 if i < len(blocks) - 2 else s2) for i, block in enumerate(blocks[:-1])]

    # text side ----------------------------------------------------------------------------------
    @staticmethod
    def _tokenize(pipe, prompts):
        tokens = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return tokens.input_ids.to(pipe.device), tokens.attention_mask.to(pipe.device)

    @staticmethod
    def _end_positions(pipe, ids):
        """Each row's end token position (CLIP's end of text, BERT's [SEP])."""
        tokenizer = pipe.tokenizer
        end_id = tokenizer.sep_token_id if getattr(tokenizer, "sep_token_id", None) is not None else tokenizer.eos_token_id
        is_end = ids == end_id
        return torch.where(is_end.any(dim=1), is_end.int().argmax(dim=1), torch.full_like(ids[:, 0], ids.shape[1] - 1))

    def _encode(self, pipe, ids, mask):
        use_mask = getattr(pipe.text_encoder.config, "use_attention_mask", False)
        self._encoding = True
        try:
            return pipe.text_encoder(ids, attention_mask=mask if use_mask else None)[0]
        finally:
            self._encoding = False

    def _end_states(self, pipe, ids, mask):
        states = self._encode(pipe, ids, mask)
        return states[torch.arange(len(ids)), self._end_positions(pipe, ids)]

    @torch.no_grad()
    def _text_hook(self, encoder, args, kwargs, output):
        if self._encoding or self._bypass:
            return output
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is None or ids.dim() != 2:
            return output
        pipe, states = self._pipe, output[0]
        for row, end in zip(range(len(ids)), self._end_positions(pipe, ids).tolist()):
            n = end - 1  # the words' tokens, between the start and the end token
            if n < 1:
                continue
            masked = ids[row].repeat(n, 1)
            masked[torch.arange(n), torch.arange(1, n + 1)] = MASK_TOKEN_ID
            masked_ends = self._encode(pipe, masked, None)[:, end]
            safe, triggers, projected = safe_token_states(states[row], masked_ends, self._concept_proj, self.config.alpha)
            if triggers.any():
                steps = safe_steps(states[row], projected, end + 1, self.config.max_safe_steps)
                self._cache = [e for e in self._cache if not torch.equal(e[0], states[row])][-(CACHE_SIZE - 1):]
                self._cache.append((states[row].detach().clone(), safe.detach(), steps))
        return output

    def _lookup(self, row):
        for original, safe, steps in self._cache:
            if original.shape == row.shape and torch.equal(original.to(row.device, row.dtype), row):
                return safe.to(row.device, row.dtype), steps
        return None

    # sampling side ------------------------------------------------------------------------------
    @torch.no_grad()
    def _unet_pre_hook(self, unet, args, kwargs):
        self._extended = None
        pipe = self._pipe
        if self._bypass or torch.is_grad_enabled() or not getattr(pipe, "do_classifier_free_guidance", False):
            return None
        args = list(args)
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        in_args = len(args) > 2
        context = args[2] if in_args else kwargs.get("encoder_hidden_states")
        if context is None or sample.shape[0] % 2 or context.shape[0] != sample.shape[0]:
            return None
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        if self._state is None or t >= self._state["t"]:  # a new sampling run starts at the highest timestep
            self._state = {"step": 0}
        self._state["t"] = t
        step = self._state["step"]
        self._state["step"] = step + 1
        uncond, text = context.chunk(2)
        safe, active = text.clone(), torch.zeros(len(text), dtype=torch.bool, device=text.device)
        for i, row in enumerate(text):
            found = self._lookup(row)
            if found is not None and (not self.config.self_validation or step <= found[1]):
                safe[i], active[i] = found[0], True
        if not active.any():
            return None
        context = torch.cat([uncond, safe])
        if self.config.re_attention:
            # The original prompt rides along as a third part of the batch: re-attention compares with its features.
            context = torch.cat([context, text])
            sample = torch.cat([sample, sample.chunk(2)[1]])
            if torch.is_tensor(timestep) and timestep.dim() and timestep.shape[0] == len(text) * 2:
                timestep = torch.cat([timestep, timestep.chunk(2)[1]])
            self._extended = (len(text), active)
        if args:
            args[0] = sample
        else:
            kwargs["sample"] = sample
        if len(args) > 1:
            args[1] = timestep
        else:
            kwargs["timestep"] = timestep
        if in_args:
            args[2] = context
        else:
            kwargs["encoder_hidden_states"] = context
        return tuple(args), kwargs

    @torch.no_grad()
    def _skip_hook(self, scale, block, args, kwargs):
        if self._extended is None or "res_hidden_states_tuple" not in kwargs:
            return None
        n, active = self._extended
        rows = active.view(-1, 1, 1, 1)
        skips = []
        for x in kwargs["res_hidden_states_tuple"]:
            if x.shape[0] != 3 * n:
                skips.append(x)
                continue
            safe, original = x[n : 2 * n], x[2 * n :]
            damped = torch.where(rows, low_frequency_reattention(safe, original, scale), safe)
            skips.append(torch.cat([x[:n], damped, original]))
        kwargs["res_hidden_states_tuple"] = tuple(skips)
        return args, kwargs

    @torch.no_grad()
    def _unet_hook(self, unet, args, kwargs, output):
        if self._extended is None:
            return output
        n = self._extended[0]
        self._extended = None
        if isinstance(output, tuple):
            return (output[0][: 2 * n],) + tuple(output[1:])
        output.sample = output.sample[: 2 * n]
        return output
