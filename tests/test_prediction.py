"""v-prediction: every conversion between a model's output, the noise and the clean latents is exact."""

import pytest
import torch
import torch.nn.functional as F

from veil.training.prediction import prediction_type, to_eps, to_x0, training_target
from veil.training.sampling import negative_guidance_target


def _pipe(kind):
    from diffusers import DDIMScheduler

    from veil.models import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=kind)
    return pipe


def _draw(seed=0, batch=3):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn((batch, 4, 8, 8), generator=generator)
    noise = torch.randn((batch, 4, 8, 8), generator=generator)
    timesteps = torch.tensor([1, 500, 999][:batch])
    return x0, noise, timesteps


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_conversions_invert_the_forward_process(kind):
    scheduler = _pipe(kind).scheduler
    assert prediction_type(scheduler) == kind
    x0, noise, timesteps = _draw()
    x_t = scheduler.add_noise(x0, noise, timesteps)
    target = training_target(x0, noise, timesteps, scheduler)
    # diffusers' own definition of v is the reference
    expected = {"epsilon": noise, "v_prediction": scheduler.get_velocity(x0, noise, timesteps), "sample": x0}[kind]
    torch.testing.assert_close(target, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(to_x0(target, x_t, timesteps, scheduler), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(to_eps(target, x_t, timesteps, scheduler), noise, atol=1e-4, rtol=1e-4)


def test_negative_guidance_target_is_the_same_in_v_and_in_eps():
    """ESD's and DuMo's targets (and KPOP's hiding target) are affine combinations: no conversion is needed."""
    pipe = _pipe("v_prediction")
    x0, noise, timesteps = _draw(1)
    x_t = pipe.scheduler.add_noise(x0, noise, timesteps)
    states = torch.randn((2, 16, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        v_uncond = pipe.unet(x_t, timesteps, encoder_hidden_states=states[:1].expand(3, -1, -1)).sample
        v_cond = pipe.unet(x_t, timesteps, encoder_hidden_states=states[1:].expand(3, -1, -1)).sample
    eps = [to_eps(v, x_t, timesteps, pipe.scheduler) for v in (v_uncond, v_cond)]
    in_v = to_eps(negative_guidance_target(v_uncond, v_cond, 1.5), x_t, timesteps, pipe.scheduler)
    torch.testing.assert_close(in_v, negative_guidance_target(*eps, 1.5), atol=1e-4, rtol=1e-4)


def test_kpop_x0_loss_space_reads_v():
    from veil.methods.kpop import KPOP

    pipe = _pipe("v_prediction")
    method = KPOP(concepts=["circle"], loss_space="x0", max_train_steps=1)
    x0, noise, timesteps = _draw(3)
    other = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    x_t = pipe.scheduler.add_noise(x0, noise, timesteps)
    # Two v predictions at x_t: of x0 itself and of another clean latent (its noise follows from x_t).
    v_right = training_target(x0, noise, timesteps, pipe.scheduler)
    s = pipe.scheduler.alphas_cumprod[timesteps].sqrt().view(-1, 1, 1, 1)
    c = (1 - pipe.scheduler.alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
    v_other = training_target(other, (x_t - s * other) / c, timesteps, pipe.scheduler)
    batch = {"latents": x_t, "timesteps": timesteps}
    distance = method._distance(pipe, v_right, v_other, batch)
    torch.testing.assert_close(distance, F.mse_loss(x0, other), atol=1e-4, rtol=1e-4)


def test_denoising_objective_targets_v():
    """Concept inversion, prompt search and key forging train on this objective."""
    from veil.attacks.base import DenoisingObjective
    from veil.attacks.inversion import ConceptInversion

    pipe = _pipe("v_prediction")
    z0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    objective = DenoisingObjective(pipe, z0, ConceptInversion.config_class(max_train_steps=1))
    noisy, timesteps, target = objective.draw(4)
    torch.testing.assert_close(to_x0(target, noisy, timesteps, pipe.scheduler), z0.expand(4, -1, -1, -1), atol=1e-4, rtol=1e-4)
