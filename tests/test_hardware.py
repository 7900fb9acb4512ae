"""The training knobs of a GPU user: resolution, batch size, gradient checkpointing, mixed precision, attention,
the optimizer stepped in the backward pass, and the peak memory record."""

import json

import pytest
import torch

import veil
from veil.cli.main import main
from veil.methods.esd import ESD
from veil.models import build_tiny_pipeline, model_fingerprint


def _esd(**overrides):
    settings = dict(concepts=["circle"], max_train_steps=2, learning_rate=1e-3, ddim_steps=4, samples_per_trajectory=2, seed=1)
    return ESD(**{**settings, **overrides})


def _weights(method):
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def test_resolution_and_batch_size_shape_the_training_latents():
    pipe = build_tiny_pipeline()
    fingerprint = model_fingerprint(pipe.unet)
    method = _esd(resolution=32, batch_size=3)
    method.attach(pipe)
    batch = method.make_batch(pipe, torch.Generator().manual_seed(0))
    # 32 px over the VAE's factor 2: 16 x 16 latents (the UNet's own sample_size is 8); 3 trajectories of 2 latents.
    assert batch["latents"].shape == (6, 4, 16, 16)
    assert batch["timesteps"].shape == (6,) and batch["cond"].shape[0] == batch["target"].shape[0] == 6
    first, second = batch["latents"][:2], batch["latents"][2:4]
    assert not torch.allclose(first, second)  # each trajectory from its own noise
    assert pipe.unet.config.sample_size == 8 and model_fingerprint(pipe.unet) == fingerprint


def test_resolution_the_unet_cannot_take_is_refused_before_training():
    with pytest.raises(veil.VeilError, match="multiple of 4"):
        veil.fit(_esd(resolution=30), build_tiny_pipeline(), progress=False)


def test_optimizer_in_backward_equals_the_usual_step():
    """The default steps each weight inside backward; clipping (here at a norm never reached) takes the usual path."""
    in_backward, usual = _esd(), _esd()
    veil.fit(in_backward, build_tiny_pipeline(), progress=False)
    veil.fit(usual, build_tiny_pipeline(), progress=False, max_grad_norm=1e9)
    expected, actual = _weights(usual), _weights(in_backward)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-7)
    assert any(not torch.equal(actual[n], v) for n, v in _start_weights().items())  # it did train


def _start_weights():
    method = _esd()
    method.attach(build_tiny_pipeline())
    return _weights(method)


def test_gradient_checkpointing_is_on_for_the_run_only_and_changes_no_result():
    seen = []

    class Watching(ESD):
        def loss(self, pipe, batch, phase="main"):
            seen.append(pipe.unet.is_gradient_checkpointing)
            return super().loss(pipe, batch, phase)

    plain, checkpointed = _esd(), Watching(_esd(gradient_checkpointing=True).config)
    veil.fit(plain, build_tiny_pipeline(), progress=False)
    pipe = build_tiny_pipeline()
    veil.fit(checkpointed, pipe, progress=False)
    assert seen == [True, True] and not pipe.unet.is_gradient_checkpointing
    for name, value in _weights(plain).items():
        torch.testing.assert_close(_weights(checkpointed)[name], value, rtol=1e-5, atol=1e-6)


def test_bf16_mixed_precision_keeps_trained_weights_in_float32():
    seen = {}

    class Watching(ESD):
        def loss(self, pipe, batch, phase="main"):
            trained = {id(p) for p in self.trainable_parameters()}
            seen["target"] = batch["target"].dtype  # the teacher's passes ran under autocast
            seen["trained"] = {p.dtype for p in self.trainable_parameters()}
            seen["frozen"] = {p.dtype for p in pipe.unet.parameters() if id(p) not in trained}
            seen["frozen"] |= {p.dtype for p in pipe.text_encoder.parameters()}
            seen["teacher"] = {t.dtype for t in self.edit.originals.values()}
            return super().loss(pipe, batch, phase)

    pipe = build_tiny_pipeline()
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    method = Watching(_esd(mixed_precision="bf16").config)
    cost = veil.fit(method, pipe, progress=False)
    assert cost["steps"] == 2 and seen["target"] == torch.bfloat16
    assert seen["trained"] == {torch.float32} and seen["frozen"] == seen["teacher"] == {torch.bfloat16}
    # After the run the pipeline is the one loaded: float32, every frozen weight exactly as it was.
    assert all(p.dtype == torch.float32 for p in pipe.unet.parameters())
    assert all(torch.equal(v, before[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert all(v.dtype == torch.float32 for v in method.state_dict().values())


def test_bf16_run_that_keeps_no_copy_trains_the_same_and_leaves_frozen_weights_in_bf16():
    """restore_frozen=False (the command line's): no float32 copy of the frozen weights is kept, so the pipeline stays
    in bf16 after the run; what is trained is exactly what a restoring run trains."""
    restoring, plain = _esd(mixed_precision="bf16"), _esd(mixed_precision="bf16")
    veil.fit(restoring, build_tiny_pipeline(), progress=False)
    pipe = build_tiny_pipeline()
    veil.fit(plain, pipe, progress=False, restore_frozen=False)
    trained = {id(p) for p in plain.trainable_parameters()}
    assert {p.dtype for p in pipe.unet.parameters() if id(p) not in trained} == {torch.bfloat16}
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}
    assert {t.dtype for t in plain.edit.originals.values()} == {torch.bfloat16}
    expected, actual = _weights(restoring), _weights(plain)
    assert expected.keys() == actual.keys() and all(torch.equal(actual[k], v) for k, v in expected.items())
    assert all(v.dtype == torch.float32 for v in actual.values())


def test_fp16_on_cpu_is_refused():
    with pytest.raises(veil.VeilError, match="fp16 mixed precision needs a CUDA GPU"):
        veil.fit(_esd(mixed_precision="fp16"), build_tiny_pipeline(), progress=False)


def test_eager_attention_is_installed():
    from diffusers.models.attention_processor import AttnProcessor

    pipe = build_tiny_pipeline()
    veil.fit(_esd(max_train_steps=1, attention="eager"), pipe, progress=False)
    assert all(isinstance(p, AttnProcessor) for p in pipe.unet.attn_processors.values())


def test_cli_flags_reach_the_config(tmp_path, capsys):
    out = tmp_path / "erased"
    code = main(["erase", "--method", "esd", "--concept", "circle", "--model", "tiny", "--steps", "1", "--set", "ddim_steps=4",
                 "--resolution", "32", "--batch-size", "2", "--gradient-checkpointing", "--mixed-precision", "bf16",
                 "--attention", "eager", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    config = json.loads((out / "veil.json").read_text())["config"]
    assert (config["resolution"], config["batch_size"], config["gradient_checkpointing"], config["mixed_precision"],
            config["attention"]) == (32, 2, True, "bf16", "eager")


def test_cli_fp16_on_cpu_is_one_sentence_before_loading(tmp_path, capsys):
    out = tmp_path / "erased"
    code = main(["erase", "--concept", "circle", "--model", "tiny", "--device", "cpu", "--mixed-precision", "fp16", "--out", str(out)])
    _, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "bf16" in lines[0] and "Traceback" not in err
    assert not out.exists()


def test_peak_memory_is_recorded_after_the_run(monkeypatch):
    """The record is read once the run's memory is all spent: after the last optimizer step, not before it."""
    import veil.training.loop as loop

    reads = []
    monkeypatch.setattr(loop, "peak_memory_mb", lambda device: reads.append(len(steps)) or 1.0)
    steps = []

    class Counting(ESD):
        def after_step(self, phase):
            steps.append(phase)

    veil.fit(Counting(_esd().config), build_tiny_pipeline(), progress=False)
    assert reads == [2]


def test_generate_takes_a_resolution(tmp_path, capsys):
    from veil.evaluation.sampling import generate

    pipe = build_tiny_pipeline()
    images = generate(pipe, ["a circle"], [0], num_inference_steps=2, resolution=24)
    assert images[0].size == (24, 24)  # the tiny model's own size is 16
    code = main(["generate", "--model", "tiny", "--prompt", "a circle", "--seeds", "0", "--num-inference-steps", "2",
                 "--resolution", "30", "--out", str(tmp_path / "grid.png")])
    _, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "multiple of 4" in lines[0]
    assert not (tmp_path / "grid.png").exists()
