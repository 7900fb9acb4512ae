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
    cost = veil.train(straight, build_tiny_pipeline(), progress=False)
    assert cost["steps"] == 6

    interrupted = _esd()
    pipe = build_tiny_pipeline()
    veil.train(interrupted, pipe, work_dir=tmp_path, checkpoint_every=2, stop_after=3, progress=False)
    assert latest_checkpoint(tmp_path).endswith("step-000002")

    resumed = _esd()  # a fresh process: new method, new pipeline
    cost = veil.train(resumed, build_tiny_pipeline(), work_dir=tmp_path, checkpoint_every=2, resume=True, progress=False)
    assert cost["steps"] == 6 and len(cost["losses"]) == 6
    expected, actual = _weights(straight), _weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_resume_with_other_settings_is_refused(tmp_path):
    from veil.models import build_tiny_pipeline

    veil.train(_esd(), build_tiny_pipeline(), work_dir=tmp_path, checkpoint_every=2, stop_after=2, progress=False)
    with pytest.raises(veil.VeilError, match="other settings"):
        veil.train(_esd(learning_rate=5e-4), build_tiny_pipeline(), work_dir=tmp_path, resume=True, progress=False)


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
        veil.train(method, tiny_pipe, work_dir=tmp_path, checkpoint_every=2, progress=False)
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.endswith("step-000002")
    assert os.path.isfile(os.path.join(checkpoint, "method.safetensors"))
    for param in tiny_pipe.unet.parameters():
        assert torch.isfinite(param).all()  # the NaN step was never applied


def test_cost_record(tiny_pipe):
    cost = veil.train(_esd(max_train_steps=2), tiny_pipe, progress=False)
    assert cost["steps"] == 2 and cost["seconds"] > 0 and cost["peak_mem_mb"] > 0
    assert all(set(step) == {"main"} for step in cost["losses"])
