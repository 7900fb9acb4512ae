"""MACE, RECE, SAFREE and AdvUnlearn on the SD 1.5 architecture: two training steps (or the closed form) on the
reduced-width build of the same block layout, and, with ``-m slow``, at true size with 128-px training images."""

import pytest
import torch

import veil
from veil.architectures import build_random_pipeline
from veil.models import load_pipeline

from .test_cli import run_cli

SETTINGS = {
    "mace": dict(images_per_concept=1, generation_steps=2, max_train_steps=2, learning_rate=1e-2),
    "rece": dict(guide="a dog", epochs=2),
    "safree": dict(),
    "advunlearn": dict(max_train_steps=2, warmup_steps=1, attack_steps=2, ddim_steps=4, learning_rate=1e-3, retain_batch=2),
}


@pytest.fixture(scope="module")
def sd15():
    return build_random_pipeline("sd15", reduced=True)


def _draw(pipe, size=None, steps=2):
    return pipe("a photo of a cat", num_inference_steps=steps, guidance_scale=7.5, output_type="pt", height=size, width=size,
                generator=torch.Generator().manual_seed(0)).images


def _round_trip(pipe, name, settings, folder, size=None):
    """Fit ``name`` on ``pipe``, save, detach and load again: the draw changes while attached and is the original's
    bit for bit once detached."""
    original = _draw(pipe, size)
    cls = veil.get_method(name)
    method = cls(cls.config_class(concepts=["cat"], **settings))
    veil.fit(method, pipe, progress=False)
    veil.Artifact.from_method(method, pipe).save(folder)
    method.detach(pipe)
    assert torch.equal(_draw(pipe, size), original)
    loaded = veil.load_artifact(folder)
    loaded.attach(pipe)
    try:
        changed = _draw(pipe, size)
    finally:
        loaded.detach(pipe)
    assert not torch.equal(changed, original), f"{name} left SD 1.5's output unchanged"
    assert torch.equal(_draw(pipe, size), original)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_new_methods_run_on_the_sd15_layout(sd15, tmp_path, name):
    _round_trip(sd15, name, SETTINGS[name], tmp_path / name)


def test_advunlearn_edits_sd15s_clip_text_encoder_layers(sd15):
    method = veil.get_method("advunlearn")(concepts=["cat"], layers=[0], component="attn")
    names = method.edited_parameter_names(sd15.text_encoder)
    assert names and all(".layers.0.self_attn." in n for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("name, flags", [
    ("advunlearn", ["--steps", "2", "--set", "warmup_steps=1", "--set", "attack_steps=2", "--set", "ddim_steps=4",
                    "--set", "retain_batch=2"]),
    ("mace", ["--steps", "2", "--set", "images_per_concept=1", "--set", "generation_steps=2"]),
])
def test_trained_new_methods_at_true_sd15_size(tmp_path, capsys, name, flags):
    """The command line at SD 1.5's true size (859 M UNet, 123 M text encoder) with 128-px images: minutes on a CPU,
    above 6 GB of memory."""
    code, out, err = run_cli(capsys, "erase", "--method", name, "--concept", "cat", "--model", "sd15-random",
                             "--resolution", "128", *flags, "--out", tmp_path / name)
    assert code == 0, err
    artifact = veil.load_artifact(tmp_path / name)
    assert artifact.manifest["config"]["resolution"] == 128 and artifact.tensors


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rece", "safree"])
def test_closed_form_and_inference_methods_at_true_sd15_size(tmp_path, name):
    _round_trip(load_pipeline("sd15-random"), name, SETTINGS[name], tmp_path / name, size=128)
