import math
import os

import pytest
import torch

import veil
from veil.errors import TrainingDiverged
from veil.methods.esd import ESD
from veil.training.loop import latest_checkpoint


def _esd(**overrides):
    settings = dict(concepts=["circle", "disk"], max_train_steps=6, learning_rate=1e-3, ddim_steps=8, seed=3)
    settings.update(overrides)
    return ESD(**settings)


def _weights(method):
    return {k: v.clone() for k, v in method.state_dict().items()}


def test_resume_equals_uninterrupted(tmp_path):
    from veil.models import build_tiny_pipeline

    straight = _esd()
    cost = veil.fit(straight, build_tiny_pipeline(), progress=False)
    assert cost["steps"] == 6

    interrupted = _esd()
    pipe = build_tiny_pipeline()
    veil.fit(interrupted, pipe, work_dir=tmp_path, checkpoint_every=2, stop_after=3, progress=False)
    assert latest_checkpoint(tmp_path).endswith("step-000002")

    resumed = _esd()  # a fresh process: new method, new pipeline
    cost = veil.fit(resumed, build_tiny_pipeline(), work_dir=tmp_path, checkpoint_every=2, resume=True, progress=False)
    assert cost["steps"] == 6 and len(cost["losses"]) == 6
    expected, actual = _weights(straight), _weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_resume_with_other_settings_is_refused(tmp_path):
    from veil.models import build_tiny_pipeline

    veil.fit(_esd(), build_tiny_pipeline(), work_dir=tmp_path, checkpoint_every=2, stop_after=2, progress=False)
    with pytest.raises(veil.VeilError, match="other settings"):
        veil.fit(_esd(learning_rate=5e-4), build_tiny_pipeline(), work_dir=tmp_path, resume=True, progress=False)


class _ExplodingESD(ESD):
    """ESD whose loss turns NaN at step 4."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def loss(self, pipe, batch, phase="main"):
        self.calls += 1
        loss = super().loss(pipe, batch, phase)
        return loss * float("nan") if self.calls >= 4 else loss


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_pipe):
    method = _ExplodingESD(concepts=["circle"], max_train_steps=10, learning_rate=1e-3, ddim_steps=8)
    with pytest.raises(TrainingDiverged, match="step 4.*step-000002"):
        veil.fit(method, tiny_pipe, work_dir=tmp_path, checkpoint_every=2, progress=False)
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.endswith("step-000002")
    assert os.path.isfile(os.path.join(checkpoint, "method.safetensors"))
    for param in tiny_pipe.unet.parameters():
        assert torch.isfinite(param).all()  # the NaN step was never applied


def test_cost_record(tiny_pipe):
    cost = veil.fit(_esd(max_train_steps=2), tiny_pipe, progress=False)
    assert cost["steps"] == 2 and cost["seconds"] > 0 and cost["peak_mem_mb"] > 0
    assert all(set(step) == {"main"} for step in cost["losses"])


def _mixed_precision_run(pipe, mixed_precision):
    """A short ESD run in ``mixed_precision``: its cost record, and whether it changed the concept's prediction
    (then detached, the original's prediction must come back exactly)."""
    method = _esd(max_train_steps=3, learning_rate=1e-2)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(pipe.device)
    timestep = torch.tensor([500], device=pipe.device)
    from veil.training.sampling import encode_prompts

    states = encode_prompts(pipe, ["circle"])
    with torch.no_grad():
        before = pipe.unet(latents, timestep, encoder_hidden_states=states).sample
    cost = veil.fit(method, pipe, mixed_precision=mixed_precision, progress=False)
    with torch.no_grad():
        after = pipe.unet(latents, timestep, encoder_hidden_states=states).sample
        method.detach(pipe)
        restored = pipe.unet(latents, timestep, encoder_hidden_states=states).sample
    assert all(t.dtype == torch.float32 for t in method.state_dict().values())  # the trained weights stay float32
    return cost, not torch.equal(before, after), torch.equal(before, restored)


def test_bf16_mixed_precision_trains_on_the_cpu(tiny_pipe):
    cost, moved, restored = _mixed_precision_run(tiny_pipe, "bf16")
    assert cost["steps"] == 3 and all(math.isfinite(step["main"]) for step in cost["losses"])
    assert moved and restored


@pytest.mark.gpu
def test_fp16_mixed_precision_trains_on_a_gpu():
    from veil.models import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed=0).to("cuda")
    cost, moved, restored = _mixed_precision_run(pipe, "fp16")
    assert cost["device"].startswith("cuda") and cost["steps"] == 3
    assert all(math.isfinite(step["main"]) for step in cost["losses"])
    assert moved and restored
