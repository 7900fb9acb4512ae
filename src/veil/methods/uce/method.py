"""UCE: Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024)."""

import torch

from ...architectures.sdxl import token_states
from ...errors import VeilError
from ...registry import register_method
from ...training.sampling import encode_prompts
from ..base import phrasings
from ..weights import WeightEditMethod, least_squares_projection
from .config import UCEConfig
from .presets import MODEL_PRESETS


def uce_closed_form(weight, erase, guide, preserve, erase_scale=1.0, preserve_scale=1.0, regularization=0.5):
    """UCE's edit of one projection ``W`` (out × d), in float64.

    ``W_new = W (γI + s_e Σ_i c*_i c_iᵀ + λ Σ_j c_j c_jᵀ) (γI + s_e Σ_i c_i c_iᵀ + λ Σ_j c_j c_jᵀ)⁻¹``:
    erase inputs ``c_i`` are sent where ``W`` sent their guides ``c*_i``, preserve inputs ``c_j`` keep
    their outputs, and ``γ`` (``regularization``, the authors' ``lamb``) holds every other direction at the
    original ``W`` (the ``γ W`` term the authors' code adds to the numerator; without it the edit would map
    those directions to zero). Solved in float64: the authors invert the right-hand matrix in float32.

    Args:
        weight: ``(out, d)``; erase, guide: ``(n, d)`` row-aligned; preserve: ``(m, d)`` (may be empty).
    """
    guide_out = guide.double() @ weight.double().T
    return least_squares_projection(weight, erase, guide_out, preserve, erase_scale, preserve_scale, regularization)


@register_method("uce")
class UCE(WeightEditMethod):
    """Unified Concept Editing (Gandikota et al., WACV 2024, arXiv 2308.14761).

    A closed-form edit of every cross-attention ``to_k``/``to_v`` so that the concept's token states
    project where the guide's do, while preserve concepts keep their projections; nothing is trained.
    Paper mode (the default) takes the token states as the authors' erasing script does; see
    :class:`UCEConfig` ``token_selection`` for the paper-era script's and veil's own.
    """

    kind = "closed_form"
    config_class = UCEConfig
    multi_concept = (
        "Every concept's phrasings are sent to the one guide in a single closed-form edit, the paper's form for many concepts."
    )
    model_presets = MODEL_PRESETS

    def edited_parameter_names(self, unet):
        projections = ("to_k", "to_v") if self.config.edit_keys else ("to_v",)
        return [n for n, _ in unet.named_parameters() if any(f"attn2.{p}.weight" in n for p in projections)]

    @staticmethod
    def _encode(pipe, prompts):
        """Token states ``(n, tokens, cross_attention_dim)``; on SDXL the two text encoders' side by side."""
        states = token_states(pipe, encode_prompts(pipe, prompts))
        width = pipe.unet.config.cross_attention_dim
        if states.shape[-1] != width:
            raise VeilError(
                f"The prompt states are {states.shape[-1]} wide but the UNet's cross-attention reads {width}; "
                "load the model as one pipeline (an SDXL folder as StableDiffusionXLPipeline)."
            )
        return states

    def _rows(self, pipe, phrases, guides, preserve):
        """``(erase, guide, preserve)`` token states, row-aligned erase/guide, as ``token_selection`` picks them."""
        width = pipe.unet.config.cross_attention_dim
        selection = self.config.token_selection
        if selection == "all":  # every position after [CLS]/<bos> (words, end token, padding), position by position
            states = lambda prompts: (self._encode(pipe, prompts)[:, 1:].reshape(-1, width) if prompts  # noqa: E731
                                      else torch.zeros(0, width, device=pipe.device))
            return states(phrases), states(guides), states(preserve)
        texts = list(dict.fromkeys(phrases + guides + preserve + ([""] if selection == "last_token_to_end" else [])))
        encoded = dict(zip(texts, self._encode(pipe, texts)))  # text -> (tokens, width)
        last = dict(zip(texts, last_subject_tokens(pipe, texts)))
        if selection == "last_token":
            rows = lambda prompts: (torch.stack([encoded[p][last[p]] for p in prompts]) if prompts  # noqa: E731
                                    else torch.zeros(0, width, device=pipe.device))
            return rows(phrases), rows(guides), rows(preserve)
        # last_token_to_end: the phrase from its last subject token on, the guide from its own, both cut to the
        # same length at the end; the preserve set keeps every row of '' and of each preserve phrase.
        erase, guide = [], []
        for phrase, target in zip(phrases, guides):
            i, j = last[phrase], last[target]
            length = encoded[phrase].shape[0] - max(i, j)
            erase.append(encoded[phrase][i : i + length])
            guide.append(encoded[target][j : j + length])
        kept = torch.cat([encoded[p] for p in [""] + preserve])
        return torch.cat(erase), torch.cat(guide), kept

    def edit_prompts(self):
        """``(erase, guide, preserve)`` prompts of the edit: each phrasing of each concept in every template, its
        guide in the same template (token states are compared position by position), the preserve concepts."""
        config = self.config
        phrases = [p for c in config.concepts for p in phrasings(config, c)]
        erase = [t.format(p) for p in phrases for t in config.templates]
        guide = [t.format(config.guide).strip() for _ in phrases for t in config.templates]
        preserve = [t.format(p) for p in config.preserve_concepts for t in config.templates]
        return erase, guide, preserve

    @torch.no_grad()
    def fit(self, pipe):
        config = self.config
        if self.attached_to is pipe:
            self.detach(pipe)
        erase, guide, preserve = self._rows(pipe, *self.edit_prompts())
        edited = {}
        params = dict(pipe.unet.named_parameters())
        preserve_scale = config.effective_preserve_scale()
        for name in self.edited_parameter_names(pipe.unet):
            edited[name] = uce_closed_form(
                params[name], erase, guide, preserve, config.erase_scale, preserve_scale, config.regularization
            )
        self.edit.edited = dict(sorted(edited.items()))
        return {"edited_tensors": len(edited)}


def last_subject_tokens(pipe, texts):
    """Per text, the position of its last subject token: the last one before the end token (the start token for
    the empty prompt), read from the tokenizer's attention mask as the authors' scripts do."""
    mask = pipe.tokenizer(list(texts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")["attention_mask"]
    return (mask.sum(dim=1) - 2).clamp(min=0).tolist()
