"""UCE: Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024)."""

import torch

from ...registry import register_method
from ...training.sampling import encode_prompts
from ..base import phrasings
from ..weights import WeightEditMethod
from .config import UCEConfig
from .presets import MODEL_PRESETS


def uce_closed_form(weight, erase, guide, preserve, erase_scale=1.0, preserve_scale=1.0, regularization=0.1):
    """UCE's edit of one projection ``W`` (out × d), in float64.

    ``W_new = W (γI + s_e Σ_i c*_i c_iᵀ + λ Σ_j c_j c_jᵀ) (γI + s_e Σ_i c_i c_iᵀ + λ Σ_j c_j c_jᵀ)⁻¹``:
    erase inputs ``c_i`` are sent where ``W`` sent their guides ``c*_i``, preserve inputs ``c_j`` keep
    their outputs, and ``γ`` holds every other direction at the original ``W`` (the ``γ W`` term the
    authors' code adds to the numerator; without it the edit would map those directions to zero).

    Args:
        weight: ``(out, d)``; erase, guide: ``(n, d)`` row-aligned; preserve: ``(m, d)`` (may be empty).
    """
    w = weight.double()
    d = w.shape[1]
    erase, guide, preserve = erase.double(), guide.double(), preserve.double()
    eye = torch.eye(d, dtype=torch.float64, device=w.device)
    right = regularization * eye + erase_scale * guide.T @ erase + preserve_scale * preserve.T @ preserve
    left = regularization * eye + erase_scale * erase.T @ erase + preserve_scale * preserve.T @ preserve
    # W_new = W · right · left⁻¹, solved rather than inverted: left is symmetric positive definite.
    return torch.linalg.solve(left, (w @ right).T).T.to(weight.dtype)


@register_method("uce")
class UCE(WeightEditMethod):
    """Unified Concept Editing (Gandikota et al., WACV 2024, arXiv 2308.14761).

    A closed-form edit of every cross-attention ``to_k``/``to_v`` so that the concept's token states
    project where the guide's do, while preserve concepts keep their projections; nothing is trained.
    """

    kind = "closed_form"
    config_class = UCEConfig
    model_presets = MODEL_PRESETS

    def edited_parameter_names(self, unet):
        projections = ("to_k", "to_v") if self.config.edit_keys else ("to_v",)
        return [n for n, _ in unet.named_parameters() if any(f"attn2.{p}.weight" in n for p in projections)]

    def _states(self, pipe, prompts):
        """Token states used by the edit: every position after [CLS]/<bos> (words, end token, padding)."""
        if not prompts:
            return torch.zeros(0, pipe.unet.config.cross_attention_dim, device=pipe.device)
        return encode_prompts(pipe, prompts)[:, 1:].reshape(-1, pipe.unet.config.cross_attention_dim)

    @torch.no_grad()
    def fit(self, pipe):
        config = self.config
        if self.attached_to is pipe:
            self.detach(pipe)
        phrases = [p for c in config.concepts for p in phrasings(config, c)]
        # Each phrase and its guide in the same template: token states are compared position by position.
        erase = self._states(pipe, [t.format(p) for p in phrases for t in config.templates])
        guide = self._states(pipe, [t.format(config.guide).strip() for _ in phrases for t in config.templates])
        preserve = self._states(pipe, [t.format(p) for p in config.preserve_concepts for t in config.templates])
        edited = {}
        params = dict(pipe.unet.named_parameters())
        for name in self.edited_parameter_names(pipe.unet):
            edited[name] = uce_closed_form(
                params[name], erase, guide, preserve, config.erase_scale, config.preserve_scale, config.regularization
            )
        self.edit.edited = dict(sorted(edited.items()))
        return {"edited_tensors": len(edited)}
