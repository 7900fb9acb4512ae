"""Shared machinery for methods that edit a subset of a component's own weights (ESD, UCE, KPOP: the UNet's;
AdvUnlearn: the text encoder's).

The edit keeps two tensors per edited parameter: the original and the edited one. ``attach``
points the parameter at the edited tensor, ``detach`` back at the original, and ``disabled()``
swaps the original in for the duration of a block — the frozen teacher without a second UNet in
memory. Swapping ``param.data`` copies nothing, so switching costs no time.
"""

import contextlib

import torch

from ..errors import VeilError
from ..models import model_fingerprint
from .base import Method



def least_squares_projection(weight, inputs, targets, preserve, scale=1.0, preserve_scale=1.0, regularization=0.1):
    """The projection ``W`` (out × d) that minimises, in float64,

    ``s Σ_i ‖W x_i − y_i‖² + λ Σ_j ‖W p_j − W₀ p_j‖² + γ ‖W − W₀‖²_F``:

    inputs ``x_i`` go to ``y_i``, preserved inputs ``p_j`` keep their outputs under the original ``W₀``
    (``weight``) and ``γ`` holds every other direction at ``W₀``. Setting the gradient to zero gives
    ``W = (s Σ y_i x_iᵀ + λ W₀ Σ p_j p_jᵀ + γ W₀)(s Σ x_i x_iᵀ + λ Σ p_j p_jᵀ + γ I)⁻¹``, solved rather than
    inverted (the right factor is symmetric positive definite).

    Args:
        weight: ``(out, d)``; inputs: ``(n, d)``; targets: ``(n, out)`` row-aligned; preserve: ``(m, d)`` (may be empty).
    """
    w = weight.double()
    x, y, p = inputs.double(), targets.double(), preserve.double()
    eye = torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    right = scale * y.T @ x + preserve_scale * (w @ p.T) @ p + regularization * w
    left = regularization * eye + scale * x.T @ x + preserve_scale * p.T @ p
    return torch.linalg.solve(left, right.T).T.to(weight.dtype)


PAPER_LAYERS = (torch.nn.Linear, torch.nn.Conv2d)

# Which names each variant keeps: a parameter's name in veil's mode, its layer's name in paper mode.
VARIANTS = {
    "xattn": lambda name: "attn2" in name,
    # Only the text side of cross-attention (UCE's edit, trained): what a prompt's tokens say changes,
    # how image features ask (to_q) and are written back (to_out) stays as it was.
    "xattn_kv": lambda name: "attn2.to_k" in name or "attn2.to_v" in name,
    "selfattn": lambda name: "attn1" in name,
    "noxattn": lambda name: "attn2" not in name,
    "full": lambda name: True,
}


def _veil_noxattn(name):
    # veil's noxattn leaves the cross-attention, the time embedding and the output layers alone.
    return not ("attn2" in name or name.startswith(("time_embedding", "conv_out", "conv_norm_out")))


def select_unet_parameters(unet, train_method, mode="veil"):
    """Names of the UNet parameters a variant trains (ESD's ``train_method``).

    ``mode="paper"`` selects as the ESD authors' diffusers script does: the parameters of the Linear and Conv2d
    layers whose name matches (no norm layer), ``noxattn`` (their ``esd-u``) with the time embedding and the output
    convolution. ``mode="veil"`` takes every parameter whose name matches, norm layers included, and leaves the time
    embedding and the output layers out of ``noxattn``.
    """
    if mode not in ("paper", "veil"):
        raise VeilError(f"mode must be 'paper' or 'veil', got {mode!r}.")
    if train_method not in VARIANTS:
        raise VeilError(f"Unknown train_method {train_method!r}; use {', '.join(VARIANTS)}.")
    keep = _veil_noxattn if (mode, train_method) == ("veil", "noxattn") else VARIANTS[train_method]
    if mode == "paper":
        names = [f"{layer}.{name}" for layer, module in unet.named_modules()
                 if isinstance(module, PAPER_LAYERS) and keep(layer) for name, _ in module.named_parameters(recurse=False)]
    else:
        names = [name for name, _ in unet.named_parameters() if keep(name)]
    if not names:
        raise VeilError(f"train_method {train_method!r} selects no parameter of this UNet.")
    return names


class WeightEdit:
    """A set of edited parameters of one pipeline component (the UNet, or the text encoder) that can be attached,
    detached and disabled; its tensors' keys carry the component's prefix (``unet.``, ``text_encoder.``)."""

    def __init__(self, component="unet"):
        self.component = component
        self.prefix = component + "."
        self.edited = {}  # name -> edited tensor (used while attached)
        self.originals = {}  # name -> original tensor (kept while attached)
        self.module = None

    def init_from(self, module, names):
        params = dict(module.named_parameters())
        # Sorted, as a reloaded state dict is: optimizer state is matched to parameters by position.
        self.edited = {name: params[name].detach().clone() for name in sorted(names)}

    def load(self, state_dict):
        self.edited = {k[len(self.prefix):]: v for k, v in sorted(state_dict.items()) if k.startswith(self.prefix)}

    def state_dict(self):
        if self.module is not None:
            params = dict(self.module.named_parameters())
            return {self.prefix + name: params[name].detach().clone() for name in self.edited}
        return {self.prefix + name: tensor.clone() for name, tensor in self.edited.items()}

    def attach(self, module, trainable=False):
        if self.module is module:
            return
        if self.module is not None:
            raise VeilError("This method is already attached to another pipeline; detach it first.")
        params = dict(module.named_parameters())
        for name, tensor in self.edited.items():
            if name not in params or params[name].shape != tensor.shape:
                raise VeilError(f"The {self.component.replace('_', ' ')} has no parameter {name!r} of shape {tuple(tensor.shape)}; "
                                "was this made for another model?")
        for name, tensor in self.edited.items():
            param = params[name]
            self.originals[name] = param.data
            param.data = tensor.to(device=param.device, dtype=param.dtype)
            param.requires_grad_(trainable)
        self.module = module

    def detach(self):
        if self.module is None:
            return
        params = dict(self.module.named_parameters())
        for name, original in self.originals.items():
            self.edited[name] = params[name].data
            params[name].data = original
            params[name].requires_grad_(False)
        self.originals = {}
        self.module = None

    @contextlib.contextmanager
    def disabled(self):
        if self.module is None:
            yield
            return
        params = dict(self.module.named_parameters())
        edited = {name: params[name].data for name in self.originals}
        try:
            for name, original in self.originals.items():
                params[name].data = original
            yield
        finally:
            for name, tensor in edited.items():
                params[name].data = tensor

    def cast_originals(self, dtype, keep=True):
        """The originals (the frozen teacher's weights) in ``dtype`` for a mixed-precision run; returns ``restore()``,
        which puts them back as they were (kept meanwhile on the CPU; ``keep=False``: not kept, left in ``dtype``)."""
        saved = {name: tensor.to("cpu") for name, tensor in self.originals.items()} if keep else {}
        self.originals = {name: tensor.to(dtype) for name, tensor in self.originals.items()}

        def restore():
            self.originals.update({name: tensor.to(self.originals[name].device) for name, tensor in saved.items()
                                   if name in self.originals})

        return restore

    def parameters(self):
        if self.module is None:
            return []
        params = dict(self.module.named_parameters())
        return [params[name] for name in self.edited]


class WeightEditMethod(Method):
    """A method whose effect is an edit of some weights of one pipeline component: the UNet's (ESD, UCE, MACE,
    RECE; KPOP adds its key) or the text encoder's (AdvUnlearn).

    Subclasses set ``component`` and name the edited parameters in ``edited_parameter_names(module)``; attach,
    detach, ``disabled()`` and persistence come from here.
    """

    #: The pipeline attribute whose weights are edited.
    component = "unet"

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.edit = WeightEdit(self.component)

    def edited_parameter_names(self, module):
        raise NotImplementedError

    def attach(self, pipe):
        if self.attached_to is pipe:
            return
        model_fingerprint(pipe.unet)  # cache the base fingerprint before any weight changes
        module = getattr(pipe, self.component)
        if not self.edit.edited:  # untrained / unfitted: the identity edit
            self.edit.init_from(module, self.edited_parameter_names(module))
        self.edit.attach(module)
        self.attached_to = pipe

    def detach(self, pipe):
        if self.attached_to is pipe:
            self.edit.detach()
            self.attached_to = None

    @contextlib.contextmanager
    def disabled(self, pipe):
        with self.edit.disabled():
            yield

    def trainable_parameters(self):
        return self.edit.parameters()

    def cast_frozen(self, dtype, keep=True):
        return self.edit.cast_originals(dtype, keep=keep)

    def state_dict(self):
        return self.edit.state_dict()

    def load_state_dict(self, state_dict):
        pipe = self.attached_to
        if pipe is not None:
            self.detach(pipe)
        self.edit.load(state_dict)
        if pipe is not None:
            self.attach(pipe)
