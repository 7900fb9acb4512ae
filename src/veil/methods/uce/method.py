"""UCE: Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024)."""

import contextlib

import torch

from ...registry import register_method
from ...training.sampling import encode_prompts
from ..base import Method
from ..weights import UNetWeightEdit
from .config import UCEConfig


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
class UCE(Method):
    """Unified Concept Editing (Gandikota et al., WACV 2024, arXiv 2308.14761).

    A closed-form edit of every cross-attention ``to_k``/``to_v`` so that the concept's token states
    project where the guide's do, while preserve concepts keep their projections; nothing is trained.
    """

    kind = "closed_form"
    config_class = UCEConfig

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.edit = UNetWeightEdit()

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
        erase = self._states(pipe, config.concepts)
        guide = self._states(pipe, [config.guide] * len(config.concepts))
        preserve = self._states(pipe, config.preserve_concepts)
        edited = {}
        for name, module in pipe.unet.named_modules():
            if not name.endswith("attn2"):
                continue
            projections = ("to_k", "to_v") if config.edit_keys else ("to_v",)
            for projection in projections:
                weight = getattr(module, projection).weight
                edited[f"{name}.{projection}.weight"] = uce_closed_form(
                    weight, erase, guide, preserve, config.erase_scale, config.preserve_scale, config.regularization
                )
        self.edit.edited = dict(sorted(edited.items()))
        return {"edited_tensors": len(edited)}

    def attach(self, pipe):
        if self.attached_to is pipe:
            return
        if not self.edit.edited:  # unfitted: the identity edit
            names = [n for n, _ in pipe.unet.named_parameters() if "attn2.to_k.weight" in n or "attn2.to_v.weight" in n]
            self.edit.init_from(pipe.unet, names)
        self.edit.attach(pipe.unet)
        self.attached_to = pipe

    def detach(self, pipe):
        if self.attached_to is pipe:
            self.edit.detach()
            self.attached_to = None

    @contextlib.contextmanager
    def disabled(self, pipe):
        with self.edit.disabled():
            yield

    def state_dict(self):
        return self.edit.state_dict()

    def load_state_dict(self, state_dict):
        was = self.attached_to
        if was is not None:
            self.detach(was)
        self.edit.load(state_dict)
        if was is not None:
            self.attach(was)
