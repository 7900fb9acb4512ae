"""What a UNet predicts, and the conversions between its output, the noise and the clean latents.

With ``a_t`` the cumulative alpha of timestep ``t``: ``x_t = sqrt(a_t)·x0 + sqrt(1 − a_t)·eps``. An
``epsilon`` model predicts ``eps``; a ``v_prediction`` model (SD 2.x at 768 px) predicts
``v = sqrt(a_t)·eps − sqrt(1 − a_t)·x0`` (Salimans & Ho, 2022); a ``sample`` model predicts ``x0``.
Every method and attack that turns a prediction into noise or clean latents goes through here, so each
honours the scheduler's ``prediction_type``.

A negative-guidance target ``u − eta·(c − u)`` is an affine combination of two predictions (its weights sum
to one), and at a fixed ``x_t`` each conversion here is affine: the target in ``v`` is the ``v`` of the
target in ``eps``, so ESD's and DuMo's targets need no conversion.
"""

import torch

from ..errors import VeilError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_type(scheduler):
    """The scheduler's ``prediction_type`` (``"epsilon"`` where it names none)."""
    kind = scheduler.config.get("prediction_type", "epsilon") or "epsilon"
    if kind not in PREDICTION_TYPES:
        raise VeilError(f"This model's scheduler predicts {kind!r}, which veil does not handle; it takes {', '.join(PREDICTION_TYPES)}.")
    return kind


def at_least_float32(x):
    """``x`` in float32, or as it is where it is already wider (a float64 run stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _scales(scheduler, timesteps, like):
    """``(sqrt(a_t), sqrt(1 − a_t))`` shaped to broadcast over ``like`` ``(batch, channels, h, w)``, in float32 or wider."""
    alphas = scheduler.alphas_cumprod.to(like.device)[timesteps.to(like.device).long()]
    alphas = alphas.to(torch.promote_types(torch.promote_types(alphas.dtype, like.dtype), torch.float32))
    shape = (-1,) + (1,) * (like.ndim - 1)
    return alphas.sqrt().view(shape), (1 - alphas).sqrt().view(shape)


def to_x0(model_output, latents, timesteps, scheduler):
    """The clean latents ``x0`` that ``model_output`` at ``(latents, timesteps)`` implies (float32 or wider)."""
    s, c = _scales(scheduler, timesteps, latents)
    out, x_t = at_least_float32(model_output), at_least_float32(latents)
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return (x_t - c * out) / s
    if kind == "v_prediction":
        return s * x_t - c * out
    return out


def to_eps(model_output, latents, timesteps, scheduler):
    """The noise ``eps`` that ``model_output`` at ``(latents, timesteps)`` implies (float32 or wider)."""
    s, c = _scales(scheduler, timesteps, latents)
    out, x_t = at_least_float32(model_output), at_least_float32(latents)
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return out
    if kind == "v_prediction":
        return c * x_t + s * out
    return (x_t - s * out) / c


def training_target(x0, noise, timesteps, scheduler):
    """What the model is trained to output for ``x_t = add_noise(x0, noise, t)``: ``noise``, ``v`` or ``x0``."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        s, c = _scales(scheduler, timesteps, x0)
        return (s * at_least_float32(noise) - c * at_least_float32(x0)).to(noise.dtype)
    return x0
