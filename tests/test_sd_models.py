"""Stable Diffusion architectures: the random-weight SD 1.5 / 2.1 / SDXL models, loading what users have,
and every method and attack on SDXL, on reduced-width configurations of the same block layout."""

import json
import os

import numpy as np
import pytest
import torch

import veil
from veil.architectures import build_random_pipeline, component_configs
from veil.architectures.clip_tokenizer import clip_tokenizer
from veil.architectures.sdxl import pipeline_inputs, pooled_width, token_states
from veil.errors import VeilError
from veil.models import load_pipeline, model_fingerprint, pipeline_kind
from veil.training.sampling import encode_prompts

from .test_cli import assert_one_sentence_error, run_cli

ARCHITECTURES = ("sd15", "sd21", "sdxl")


@pytest.fixture(scope="module")
def pipes():
    return {name: build_random_pipeline(name, reduced=True) for name in ARCHITECTURES}


@pytest.fixture(scope="module")
def folders(pipes, tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    out = {}
    for name, pipe in pipes.items():
        pipe.save_pretrained(root / name)
        out[name] = root / name
    return out


def test_clip_tokenizer_is_the_real_one():
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = clip_tokenizer(pad_token="!")("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[3:] == [49407] + [0] * 73  # SD 2.x / SDXL's second tokenizer pads with "!"


@pytest.mark.parametrize("name, unet, vae, text", [
    ("sd15", 859_520_964, 83_653_863, [123_060_480]),
    ("sd21", 865_910_724, 83_653_863, [340_387_840]),
    ("sdxl", 2_567_463_684, 83_653_863, [123_060_480, 694_659_840]),
])
def test_published_configurations_have_the_published_sizes(name, unet, vae, text):
    import diffusers

    from veil.architectures import _text_encoder

    _, configs = component_configs(name)
    with torch.device("meta"):  # the true sizes without their memory; the slow test builds them for real
        counts = [sum(p.numel() for p in m.parameters()) for m in (
            diffusers.UNet2DConditionModel(**configs["unet"]), diffusers.AutoencoderKL(**configs["vae"]),
            *[_text_encoder(configs[k]) for k in ("text_encoder", "text_encoder_2") if k in configs],
        )]
    assert counts == [unet, vae, *text]


def test_reduced_models_keep_the_architecture(pipes):
    assert type(pipes["sdxl"]).__name__ == "StableDiffusionXLPipeline"
    assert type(pipes["sd15"]).__name__ == type(pipes["sd21"]).__name__ == "StableDiffusionPipeline"
    assert pipes["sd21"].scheduler.config.prediction_type == "v_prediction"
    assert type(pipes["sd15"].scheduler).__name__ == "PNDMScheduler"  # as SD 1.5 ships it
    for name, pipe in pipes.items():
        _, full = component_configs(name)
        assert list(pipe.unet.config.down_block_types) == full["unet"]["down_block_types"]
        assert list(pipe.unet.config.up_block_types) == full["unet"]["up_block_types"]
        assert pipe.vae_scale_factor == 8 and pipe.tokenizer.model_max_length == 77
    # The same seed gives the same weights, so an artifact made on one build attaches to the next.
    assert model_fingerprint(build_random_pipeline("sd15", reduced=True).unet) == model_fingerprint(pipes["sd15"].unet)
    assert model_fingerprint(build_random_pipeline("sd15", reduced=True, seed=1).unet) != model_fingerprint(pipes["sd15"].unet)


def test_a_half_precision_build_is_the_float32_build_cast(pipes):
    half = build_random_pipeline("sdxl", reduced=True, dtype=torch.bfloat16)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        full = getattr(pipes["sdxl"], name).state_dict()
        for key, tensor in getattr(half, name).state_dict().items():
            assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, full[key].to(torch.bfloat16)), (name, key)


def test_folders_load_as_their_pipeline_class(pipes, folders):
    for name, folder in folders.items():
        assert pipeline_kind(str(folder)) == ("sdxl" if name == "sdxl" else "sd")
        loaded = load_pipeline(str(folder))
        assert type(loaded).__name__ == type(pipes[name]).__name__
        assert model_fingerprint(loaded.unet) == model_fingerprint(pipes[name].unet)
    assert pipeline_kind("sdxl-random") == "sdxl" and pipeline_kind("sd21-random") == pipeline_kind("shapes") == "sd"


def test_safety_checker_is_left_out_and_variants_load(pipes, tmp_path):
    folder = tmp_path / "sd15-fp16"
    pipes["sd15"].save_pretrained(folder, variant="fp16")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"])  # named, but never to be loaded
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(VeilError, match="--variant fp16"):
        load_pipeline(str(folder))
    with pytest.raises(VeilError, match="drop --variant"):
        load_pipeline("sd15-random", variant="fp16")
    loaded = load_pipeline(str(folder), variant="fp16")
    assert loaded.safety_checker is None and loaded.feature_extractor is None
    assert model_fingerprint(loaded.unet) == model_fingerprint(pipes["sd15"].unet)


def test_other_pipeline_classes_are_refused_before_loading(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    code, _, err = run_cli(capsys, "erase", "--method", "uce", "--concept", "cat", "--model", tmp_path, "--out", tmp_path / "x")
    assert_one_sentence_error(code, err, "KandinskyPipeline", "StableDiffusionXLPipeline")


def test_fingerprint_survives_a_patched_sample_size(folders):
    pipe = load_pipeline(str(folders["sd15"]))
    before = model_fingerprint(pipe.unet)
    pipe.unet.register_to_config(sample_size=4)  # a training resolution other than the model's own
    assert model_fingerprint(pipe.unet) == before
    fresh = load_pipeline(str(folders["sd15"]))
    assert model_fingerprint(fresh.unet) == before


def test_sdxl_prompt_states_carry_the_pooled_embedding_exactly(pipes):
    pipe = pipes["sdxl"]
    packed = encode_prompts(pipe, ["a cat", "a dog"])
    states, _, pooled, _ = pipe.encode_prompt(["a cat", "a dog"], device="cpu", do_classifier_free_guidance=False)
    assert packed.shape == (2, 78, pipe.unet.config.cross_attention_dim)
    assert torch.equal(token_states(pipe, packed), states)
    assert torch.equal(pipeline_inputs(pipe, packed)["pooled_prompt_embeds"], pooled)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([10, 500])
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
    with torch.no_grad():
        unpacked = pipe.unet(latents, timesteps, encoder_hidden_states=packed).sample
        explicit = pipe.unet(latents, timesteps, encoder_hidden_states=states,
                             added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        other = pipe.unet(latents, timesteps, encoder_hidden_states=states,
                          added_cond_kwargs={"text_embeds": pooled.flip(0), "time_ids": time_ids}).sample
    assert torch.equal(unpacked, explicit) and not torch.allclose(unpacked, other)


@pytest.mark.parametrize("force_zeros", [True, False])
def test_sdxl_training_unconditional_is_the_pipelines(pipes, force_zeros):
    """ESD-family sampling guides with what SDXL's pipeline uses without a negative prompt: zeros where its config sets
    force_zeros_for_empty_prompt (SDXL base's does), the empty prompt encoded where it does not."""
    from veil.training.sampling import PromptCache

    pipe = pipes["sdxl"]
    assert pipe.config.force_zeros_for_empty_prompt  # the published configuration's
    pipe.register_to_config(force_zeros_for_empty_prompt=force_zeros)
    try:
        _, negative, _, negative_pooled = pipe.encode_prompt(["a cat"], device="cpu", do_classifier_free_guidance=True)
        uncond = PromptCache()(pipe, "")
    finally:
        pipe.register_to_config(force_zeros_for_empty_prompt=True)
    assert torch.equal(token_states(pipe, uncond), negative)
    assert torch.equal(pipeline_inputs(pipe, uncond)["pooled_prompt_embeds"], negative_pooled)
    assert bool(negative.abs().sum() == 0) == force_zeros
    assert not torch.equal(encode_prompts(pipe, [""]), PromptCache()(pipe, ""))  # UCE's "" stays the text encoded


def test_dumo_token_gate_remembers_sdxl_prompts(pipes):
    """The gate finds a prompt's tokens again on SDXL (the second encoder's states, the context's last columns): an
    unrelated prompt's tokens skip the eraser, which unknown tokens would not."""
    from veil.methods.dumo import DuMo

    pipe = pipes["sdxl"]
    method = DuMo(concepts=["cat"], skip_on="tokens", token_skip_threshold=0.999, gate_threshold=0.0)
    method.attach(pipe)
    try:
        latents = torch.randn(2, 4, 8, 8)
        states, _, _, _ = pipe.encode_prompt(["cat", "a red bicycle"], device="cpu", do_classifier_free_guidance=False)
        gates = method.gates(latents, states)["cat"]
        unknown = method.gates(latents, states * 1.001)["cat"]  # states the text encoder did not hand over
    finally:
        method.detach(pipe)
    assert gates[0] > 0 and gates[1] == 0.0
    assert unknown[1] > 0  # unknown tokens: erred on the side of the concept


def test_attack_text_encoding_matches_the_pipeline_on_sdxl(pipes):
    from veil.token_slots import PromptTemplate, encode, input_table

    pipe = pipes["sdxl"]
    with torch.no_grad():
        encoded = encode(pipe, PromptTemplate(pipe.tokenizer, suffix="a red cat"))
    assert torch.allclose(encoded, encode_prompts(pipe, ["a red cat"]), atol=1e-6)
    assert input_table(pipe).shape == (49408, 96)  # both encoders' rows side by side


def _draw(pipe, steps=2):
    return pipe("a cat", num_inference_steps=steps, guidance_scale=7.5, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("name, settings", [
    ("esd", dict(max_train_steps=1, ddim_steps=4, learning_rate=1e-2)),
    ("uce", dict(guide="a dog")),
    ("sld", dict(preset="max")),
    ("kpop", dict(max_train_steps=1, ddim_steps=4, learning_rate=1e-2, num_key_tokens=2)),
    ("dumo", dict(max_train_steps=1, tlmo_max_train_steps=1, ddim_steps=4, learning_rate=1e-2)),
])
def test_every_method_runs_on_sdxl(pipes, tmp_path, name, settings):
    pipe = pipes["sdxl"]
    original = _draw(pipe)
    cls = veil.get_method(name)
    method = cls(cls.config_class(concepts=["cat"], **settings))
    veil.fit(method, pipe, progress=False)
    artifact = veil.Artifact.from_method(method, pipe)
    artifact.save(tmp_path / name)
    method.detach(pipe)
    assert torch.equal(_draw(pipe), original)  # detached: the base model again
    loaded = veil.load_artifact(tmp_path / name)
    attached = loaded.attach(pipe)
    try:
        changed = _draw(pipe)
        if name == "kpop":
            with attached.unlocked(pipe, method.key):
                assert _draw(pipe).shape == original.shape
    finally:
        loaded.detach(pipe)
    assert not torch.equal(changed, original), f"{name} left SDXL's output unchanged"
    assert torch.equal(_draw(pipe), original)


def test_uce_edits_sdxl_with_its_2048_wide_layout(pipes):
    """The edit sends the concept's token states where the guide's went, in the UNet's full cross-attention width."""
    pipe = pipes["sdxl"]
    method = veil.get_method("uce")(concepts=["cat"], guide="a dog", preserve_concepts=[])
    method.fit(pipe)
    erase, guide, _ = method._rows(pipe, ["cat"], ["a dog"], [])
    assert erase.shape[-1] == pipe.unet.config.cross_attention_dim
    name = next(iter(method.edit.edited))
    weight, edited = dict(pipe.unet.named_parameters())[name].detach(), method.edit.edited[name]
    before = (erase @ weight.T - guide @ weight.T).norm()
    after = (erase @ edited.T - guide @ weight.T).norm()
    assert after < 0.5 * before


def test_dumo_epr_copies_sdxl_added_embeddings(pipes):
    from veil.methods.dumo.model import DuMoEPR

    unet = pipes["sdxl"].unet
    epr = DuMoEPR.from_unet(unet)
    assert torch.equal(epr.add_embedding.linear_1.weight, unet.add_embedding.linear_1.weight)
    states = encode_prompts(pipes["sdxl"], ["a cat"])
    added = {"text_embeds": states[:, -1, : pooled_width(unet)], "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        down, mid = epr(torch.randn(1, 4, 8, 8), torch.tensor([500]), token_states(pipes["sdxl"], states), added_cond_kwargs=added)
    assert len(down) == epr.num_down_residuals and all(float(r.abs().max()) == 0 for r in [*down, mid])  # identity at init
    with pytest.raises(VeilError, match="added_cond_kwargs"):
        epr(torch.randn(1, 4, 8, 8), torch.tensor([500]), token_states(pipes["sdxl"], states))


def test_every_attack_runs_on_sdxl(pipes):
    from veil.attacks import list_attacks, run_attacks
    from veil.methods.kpop import KPOP, KPOPConfig

    pipe = pipes["sdxl"]
    method = KPOP(KPOPConfig.paper(["cat"], max_train_steps=1, layers="all", ddim_steps=4, num_key_tokens=2))
    veil.fit(method, pipe, progress=False)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    try:
        for attack in list_attacks():
            out = run_attacks(pipe, method, "cat", images, [attack], classify=None, seeds=(0,), num_inference_steps=2,
                              configs={attack: {"max_train_steps": 2}}, return_results=True)
            assert out is not None
    finally:
        method.detach(pipe)


def test_trajectories_are_ddim_whatever_the_pipeline_ships(pipes):
    """SD 1.5 ships PNDM: its trajectory must still be DDIM's, without PNDM's repeated timestep."""
    from diffusers import DDIMScheduler

    from veil.training.sampling import sample_partial_trajectory

    pipe = pipes["sd15"]
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1])))
    try:
        cond, uncond = encode_prompts(pipe, ["a cat"]), encode_prompts(pipe, [""])
        sample_partial_trajectory(pipe, cond, uncond, [3], num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    ddim.set_timesteps(4)
    assert seen == ddim.timesteps.tolist()[:3] == [751, 501, 251]


# The command line -------------------------------------------------------------------------------------

def test_cli_erase_hide_generate_export_on_sd_folders(folders, tmp_path, capsys):
    code, out, err = run_cli(capsys, "erase", "--method", "esd", "--concept", "cat", "--model", folders["sd15"], "--steps", "1",
                             "--set", "ddim_steps=4", "--out", tmp_path / "esd")
    assert code == 0, err
    code, out, err = run_cli(capsys, "hide", "--concept", "cat", "--model", folders["sdxl"], "--steps", "1", "--set", "ddim_steps=4",
                             "--set", "key_finish_steps=0", "--out", tmp_path / "kpop", "--key-out", tmp_path / "cat.veilkey")
    assert code == 0, err
    code, out, err = run_cli(capsys, "generate", "--model", folders["sdxl"], "--artifact", tmp_path / "kpop", "--key",
                             tmp_path / "cat.veilkey", "--seeds", "0", "--num-inference-steps", "2", "--out", tmp_path / "g.png")
    assert code == 0, err
    images = sorted(os.listdir(tmp_path / "g"))
    assert len(images) == 3 and all(name.endswith("-seed0.png") for name in images)  # original, kpop, unlocked
    from PIL import Image

    assert Image.open(tmp_path / "g" / images[0]).size == (64, 64)  # full size, not the grid's 96-px cell
    code, out, err = run_cli(capsys, "eval", "--model", folders["sdxl"], "--artifact", tmp_path / "kpop", "--key", tmp_path / "cat.veilkey",
                             "--targets", "circle", "--limit", "1", "--num-inference-steps", "2", "--out", tmp_path / "eval")
    assert code == 0, err
    assert set(json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]) == {"original", "erased", "unlocked"}
    for artifact, model in (("esd", "sd15"), ("kpop", "sdxl")):
        code, out, err = run_cli(capsys, "export", "--artifact", tmp_path / artifact, "--model", folders[model],
                                 "--out", tmp_path / f"exported-{model}")
        assert code == 0, err
        exported = load_pipeline(str(tmp_path / f"exported-{model}"))
        assert type(exported).__name__ == type(load_pipeline(str(folders[model]))).__name__
        edited = veil.load_artifact(tmp_path / artifact).tensors
        name = next(iter(edited))
        assert torch.equal(exported.unet.state_dict()[name[len("unet."):]], edited[name])  # the edit, not the base


def test_generate_defaults_to_sd_guidance_and_warns_about_sld_warmup(folders, tmp_path, capsys, monkeypatch):
    from veil.evaluation import sampling

    code, _, err = run_cli(capsys, "erase", "--method", "sld", "--concept", "cat", "--model", folders["sd21"], "--out", tmp_path / "sld")
    assert code == 0, err
    used = []
    real = sampling.generate
    monkeypatch.setattr(sampling, "generate", lambda *a, **k: used.append(k["guidance_scale"]) or real(*a, **k))
    code, out, err = run_cli(capsys, "generate", "--model", folders["sd21"], "--artifact", tmp_path / "sld", "--prompt", "a cat",
                             "--seeds", "0", "--num-inference-steps", "3", "--out", tmp_path / "g.png")
    assert code == 0, err
    assert set(used) == {7.5}
    assert "warning: SLD starts after 10 warm-up steps" in out


@pytest.mark.parametrize("method, settings", [("sld", []), ("dumo", ["--steps", "1", "--set", "tlmo_max_train_steps=0", "--set", "ddim_steps=4"])])
def test_export_refuses_what_a_pipeline_folder_cannot_hold(folders, tmp_path, capsys, method, settings):
    code, _, err = run_cli(capsys, "erase", "--method", method, "--concept", "cat", "--model", folders["sd15"], *settings,
                           "--out", tmp_path / method)
    assert code == 0, err
    for fmt, out in (("pipeline", tmp_path / "exported"), ("unet-state-dict", tmp_path / "unet.safetensors")):
        code, _, err = run_cli(capsys, "export", "--artifact", tmp_path / method, "--format", fmt, "--model", "no/such-model",
                               "--out", out)  # refused before the model would load
        assert_one_sentence_error(code, err, f"A {method} artifact", "--artifact")
        assert not os.path.exists(out)


@pytest.mark.slow
@pytest.mark.parametrize("name, unet", [("sd15", 859_520_964), ("sd21", 865_910_724), ("sdxl", 2_567_463_684)])
def test_true_size_models_build(name, unet):
    pipe = load_pipeline(f"{name}-random", dtype=torch.bfloat16 if name == "sdxl" else torch.float32)
    assert sum(p.numel() for p in pipe.unet.parameters()) == unet
    assert encode_prompts(pipe, ["a photo of a cat"]).shape[1] == 77 + (name == "sdxl")
