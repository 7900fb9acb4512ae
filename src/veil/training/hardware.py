"""How a training run uses its hardware: the latents' resolution, mixed precision, the attention kernel and
gradient checkpointing (the fields of :class:`veil.methods.base.TrainingConfig`).

Mixed precision follows diffusers' training scripts: the frozen weights (text encoder, VAE, the UNet weights
that are not trained, a weight edit's originals) are cast to the half dtype for the run, the trained weights and
the optimizer's state stay in float32, and every UNet pass runs under autocast. The frozen weights as loaded wait
on the CPU and come back when the run ends.
"""

import contextlib

import torch

from ..errors import VeilError
from ..models import model_fingerprint

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def latent_size(pipe, resolution=None):
    """Side of the latents that stand for ``resolution``-pixel images (``None``: the model's own size)."""
    if resolution is None:
        return int(pipe.unet.config.sample_size)
    scale = int(pipe.vae_scale_factor)
    # Each down block but the last halves the latents, and the up blocks must meet the skips at the same size.
    multiple = scale * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0 or resolution % multiple:
        nearest = max(multiple, round(float(resolution) / multiple) * multiple) if isinstance(resolution, (int, float)) else multiple
        raise VeilError(
            f"resolution must be a whole multiple of {multiple} pixels for this model, got {resolution!r}; use e.g. {nearest}."
        )
    return resolution // scale


def check_mixed_precision(mixed_precision, device):
    """The mixed-precision setting, refused where it would silently do nothing (fp16 autocast off CUDA)."""
    if mixed_precision not in ("no", *HALF_DTYPES):
        raise VeilError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {mixed_precision!r}.")
    if mixed_precision == "fp16" and torch.device(device).type != "cuda":
        raise VeilError("fp16 mixed precision needs a CUDA GPU and would change nothing on a CPU; use bf16 there, or no.")
    return mixed_precision


def autocast_for(device, mixed_precision):
    """A context-manager factory: autocast to the half dtype on ``device``, or nothing for ``"no"``."""
    if mixed_precision == "no":
        return contextlib.nullcontext
    device_type, dtype = torch.device(device).type, HALF_DTYPES[mixed_precision]
    return lambda: torch.autocast(device_type, dtype=dtype)


def set_attention(unet, attention):
    """Give every attention layer of ``unet`` PyTorch's SDPA kernel (``"sdpa"``) or the plain softmax (``"eager"``)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if attention not in ("sdpa", "eager"):
        raise VeilError(f"attention must be 'sdpa' or 'eager', got {attention!r}.")
    wanted = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    processors = unet.attn_processors
    if any(type(p) is not wanted for p in processors.values()):  # those already right stay the same objects
        unet.set_attn_processor({n: p if type(p) is wanted else wanted() for n, p in processors.items()})


def cast_frozen(pipe, method, trained, dtype, keep=True):
    """Frozen weights of ``pipe`` and of ``method`` in ``dtype``, the ``trained`` parameters in float32; returns
    ``restore()``, which puts the frozen weights back as they were (kept meanwhile on the CPU, off a GPU's memory),
    so that after training the pipeline is the one the user loaded.

    ``keep=False`` keeps no copy and ``restore()`` leaves the frozen weights in ``dtype``: for a caller that drops the
    pipeline after training (the command line). On a CPU the kept copy is the loaded weights themselves, so only
    ``keep=False`` lowers the memory a run holds."""
    model_fingerprint(pipe.unet)  # the base's fingerprint is of its weights as loaded, not as cast
    trained_ids = {id(p) for p in trained}
    saved = []  # (owner, name or None, tensor as it was, on the CPU)
    with torch.no_grad():
        for component in pipe.components.values():
            if not isinstance(component, torch.nn.Module):
                continue
            for param in component.parameters():
                if id(param) not in trained_ids and param.is_floating_point() and param.dtype != dtype:
                    if keep:
                        saved.append((param, None, param.data.to("cpu")))
                    param.data = param.data.to(dtype)
            for module in component.modules():
                for name, buffer in module.named_buffers(recurse=False):
                    if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                        if keep:
                            saved.append((module, name, buffer.to("cpu")))
                        setattr(module, name, buffer.to(dtype))
        for param in trained:
            param.data = param.data.float()
    restore_method = method.cast_frozen(dtype, keep=keep)

    def restore():
        with torch.no_grad():
            for owner, name, tensor in saved:
                if name is None:
                    owner.data = tensor.to(owner.device)
                else:
                    setattr(owner, name, tensor.to(getattr(owner, name).device))
        saved.clear()
        restore_method()

    return restore


@contextlib.contextmanager
def gradient_checkpointing(unet, enabled):
    """Inside the block the UNet recomputes its activations in the backward pass (when ``enabled``)."""
    was = bool(getattr(unet, "is_gradient_checkpointing", False))
    if enabled and not was:
        unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if enabled and not was:
            unet.disable_gradient_checkpointing()
