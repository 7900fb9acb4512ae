"""RECE: Reliable and Efficient Concept Erasure of text-to-image diffusion models (Gong et al., ECCV 2024)."""

import torch

from ...registry import register_method
from ..uce.method import UCE, uce_closed_form
from .config import RECEConfig
from .presets import MODEL_PRESETS


def rece_adversarial_embedding(originals, edited, states, regularization):
    """The token states that make the edited projections say what the original ones said of ``states``.

    ``e' = argmin_e Σ_l ‖W'_l e − W_l c‖² + ρ‖e‖²`` over every edited projection ``l``, in closed form:
    ``e' = (Σ W'_lᵀ W'_l + ρI)⁻¹ (Σ W'_lᵀ W_l) c`` for each state ``c``, in float64.

    Args:
        originals, edited: ``{name: (out, d)}`` weights before and after the edit, same names.
        states: ``(n, d)`` token states of the concept.
        regularization: ``ρ > 0``.
    """
    d = states.shape[1]
    gram = regularization * torch.eye(d, dtype=torch.float64, device=states.device)
    cross = torch.zeros(d, d, dtype=torch.float64, device=states.device)
    for name, new in edited.items():
        new, old = new.double(), originals[name].double()
        gram += new.T @ new
        cross += new.T @ old
    # Solved rather than inverted: gram is symmetric positive definite.
    return torch.linalg.solve(gram, cross @ states.double().T).T.to(states.dtype)


def projection_gap(originals, edited, adversarial, states):
    """``Σ_l ‖W'_l e' − W_l c‖ / Σ_l ‖W_l c‖``: how far the edited projections of ``adversarial`` are from the
    original projections of the concept's ``states`` (0: it regenerates the concept exactly)."""
    gap = norm = 0.0
    for name, new in edited.items():
        target = states.double() @ originals[name].double().T
        gap += float((adversarial.double() @ new.double().T - target).norm())
        norm += float(target.norm())
    return gap / max(norm, 1e-12)


@register_method("rece")
class RECE(UCE):
    """Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024, arXiv 2407.12383).

    UCE's closed-form edit of every cross-attention ``to_k``/``to_v``, then ``epochs`` rounds: derive in
    closed form the embedding that makes the edited projections regenerate the concept, and erase it too
    (sent to the guide, the empty prompt and the preserve concepts kept); nothing is trained.
    """

    config_class = RECEConfig
    multi_concept = (
        "UCE's single edit over every concept, then each round erases the embedding that regenerates each of them."
    )
    model_presets = MODEL_PRESETS

    @torch.no_grad()
    def fit(self, pipe):
        config = self.config
        if self.attached_to is pipe:
            self.detach(pipe)
        erase_prompts, guide_prompts, preserve_prompts = self.edit_prompts()
        erase, guide, preserve = self._rows(pipe, erase_prompts, guide_prompts, preserve_prompts)
        # Each round keeps the empty prompt as well as the preserve concepts (the authors' retain set).
        kept = self._rows(pipe, [], [], [""] + preserve_prompts)[2]
        params = dict(pipe.unet.named_parameters())
        originals = {name: params[name].detach() for name in self.edited_parameter_names(pipe.unet)}
        edited = {
            name: uce_closed_form(w, erase, guide, preserve, config.erase_scale, config.effective_preserve_scale(),
                                  config.regularization)
            for name, w in originals.items()
        }
        gaps = []
        for _ in range(config.epochs):
            adversarial = rece_adversarial_embedding(originals, edited, erase, config.embedding_regularization)
            gaps.append(round(projection_gap(originals, edited, adversarial, erase), 4))
            edited = {
                name: uce_closed_form(w, adversarial, guide, kept, config.erase_scale, config.round_preserve_scale,
                                      config.regularization)
                for name, w in edited.items()
            }
        self.edit.edited = dict(sorted(edited.items()))
        return {"edited_tensors": len(edited), "adversarial_gaps": gaps}
