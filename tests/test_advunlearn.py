import pytest
import torch
from safetensors.torch import load_file

import veil
from veil.errors import VeilError
from veil.methods.advunlearn import AdvUnlearn, AdvUnlearnConfig, text_encoder_parameters
from veil.models import build_tiny_pipeline

from .conftest import render, saved_and_reloaded
from .test_cli import assert_one_sentence_error, run_cli

FAST = dict(max_train_steps=4, warmup_steps=2, attack_steps=2, ddim_steps=4, samples_per_trajectory=2,
            learning_rate=1e-2, retain_prompts=["a square", "a red triangle"], retain_batch=2)


def _unet_state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_trains_the_text_encoder_only_and_detaches_bit_for_bit(tmp_path, tiny_pipe):
    original, unet = render(tiny_pipe), _unet_state(tiny_pipe)
    method = AdvUnlearn(concepts=["circle"], **FAST)
    method.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe), original)  # untrained: the identity
    method.detach(tiny_pipe)
    cost = veil.fit(method, tiny_pipe, progress=False)
    assert cost["steps"] == 4 and all(torch.isfinite(torch.tensor(s["main"])) for s in cost["losses"])
    edited = render(tiny_pipe)
    assert not torch.equal(edited, original)
    assert all(torch.equal(v, unet[k]) for k, v in tiny_pipe.unet.state_dict().items())  # the UNet is untouched
    state = method.state_dict()
    assert state and all(k.startswith("text_encoder.encoder.layer.") for k in state)
    artifact = saved_and_reloaded(method, tiny_pipe, tmp_path / "au", original, edited)
    artifact.detach(tiny_pipe)
    assert torch.equal(render(tiny_pipe), original)


def test_exports_a_pipeline_folder_with_the_edited_text_encoder(tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--method", "advunlearn", "--concept", "circle", "--model", "tiny", "--steps", "2",
                           "--set", "warmup_steps=1", "--set", "attack_steps=1", "--set", "ddim_steps=4", "--out", tmp_path / "au")
    assert code == 0, err
    code, _, err = run_cli(capsys, "export", "--artifact", tmp_path / "au", "--model", "tiny", "--out", tmp_path / "pipe")
    assert code == 0, err
    tensors = veil.load_artifact(tmp_path / "au").tensors
    exported = load_file(str(tmp_path / "pipe" / "text_encoder" / "model.safetensors"))
    name = next(iter(tensors))
    assert torch.equal(exported[name[len("text_encoder."):]], tensors[name])
    assert not torch.equal(tensors[name], build_tiny_pipeline().text_encoder.state_dict()[name[len("text_encoder."):]])
    code, _, err = run_cli(capsys, "export", "--artifact", tmp_path / "au", "--format", "unet-state-dict", "--out", tmp_path / "u.safetensors")
    assert_one_sentence_error(code, err, "besides UNet weights", "pipeline folder")


def test_the_attack_lowers_its_objective_and_starts_after_the_warm_up(tiny_pipe):
    from veil.token_slots import encode

    method = AdvUnlearn(concepts=["circle"], **{**FAST, "attack_init": "latest", "attack_steps": 10, "attack_learning_rate": 0.1})
    veil.fit(method, tiny_pipe, progress=False)  # an edit to attack
    generator = torch.Generator().manual_seed(0)
    method.attach(tiny_pipe)
    try:
        method._step, method._adversary = 0, None
        warm = method.make_batch(tiny_pipe, generator)
        assert warm["adversary"] is None and "attack_loss" not in warm
        method._step = method.config.warmup_steps
        batch = method.make_batch(tiny_pipe, generator)
        assert batch["adversary"].shape == (1, tiny_pipe.text_encoder.config.hidden_size) and "attack_loss" in batch
        template = batch["template"]
        assert template.slots.tolist() == [1]  # the adversarial token comes first, after the start token
        n = batch["n"]
        latents, timesteps = batch["latents"][:n], batch["timesteps"][:n]
        target = torch.randn(latents.shape, generator=generator)

        def objective(vectors):
            with torch.no_grad():
                states = encode(tiny_pipe, template, vectors=vectors).expand(n, -1, -1)
                return float(torch.nn.functional.mse_loss(tiny_pipe.unet(latents, timesteps, encoder_hidden_states=states).sample, target))

        start = method._adversary.clone()
        weights = {k: v.clone() for k, v in tiny_pipe.text_encoder.state_dict().items()}
        method._attack(tiny_pipe, template, latents, timesteps, target, generator)
        assert objective(method._adversary) < objective(start)
        assert all(torch.equal(v, weights[k]) for k, v in tiny_pipe.text_encoder.state_dict().items())  # held fixed
        assert all(p.grad is None for p in method.trainable_parameters())
    finally:
        method.detach(tiny_pipe)


def test_resume_equals_uninterrupted(tmp_path):
    settings = dict(FAST, max_train_steps=5, warmup_steps=2, attack_init="latest")
    straight = AdvUnlearn(concepts=["circle"], **settings)
    veil.fit(straight, build_tiny_pipeline(), progress=False)
    veil.fit(AdvUnlearn(concepts=["circle"], **settings), build_tiny_pipeline(), work_dir=tmp_path, checkpoint_every=2,
             stop_after=3, progress=False)
    resumed = AdvUnlearn(concepts=["circle"], **settings)
    cost = veil.fit(resumed, build_tiny_pipeline(), work_dir=tmp_path, checkpoint_every=2, resume=True, progress=False)
    assert cost["steps"] == 5 and resumed._step == 5
    expected, actual = straight.state_dict(), resumed.state_dict()
    assert all(torch.allclose(actual[k], expected[k], atol=1e-6) for k in expected)
    torch.testing.assert_close(resumed._adversary, straight._adversary)


def test_parameter_selection_on_bert_and_clip():
    bert = build_tiny_pipeline().text_encoder
    clip = build_tiny_pipeline(text_encoder="clip").text_encoder
    everything = text_encoder_parameters(clip)
    assert any(n.endswith("final_layer_norm.weight") for n in everything) and not any("embeddings" in n for n in everything)
    assert set(text_encoder_parameters(clip, component="attn")) == {n for n in everything if "self_attn" in n}
    assert set(text_encoder_parameters(clip, component="mlp")) == {n for n in everything if ".mlp." in n}
    assert all(".layers.1." in n for n in text_encoder_parameters(clip, layers=[1], component="attn"))
    attn = text_encoder_parameters(bert, component="attn")
    assert attn and all(".attention." in n and "LayerNorm" not in n for n in attn)
    mlp = text_encoder_parameters(bert, component="mlp")
    assert {n.split(".", 3)[3] for n in mlp} == {"intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight", "output.dense.bias"}
    assert not any(n.startswith(("embeddings", "pooler")) for n in text_encoder_parameters(bert))
    with pytest.raises(VeilError, match="layers names layer 7, but this text encoder has 2 layers"):
        text_encoder_parameters(bert, layers=[7])


def test_retain_prompts_that_name_a_concept_are_left_out():
    config = AdvUnlearnConfig(concepts=["cat"], synonyms={"cat": ["kitten"]},
                              retain_prompts=["a photo of a cat", "a kitten", "a catalogue", "a dog", "a Cat toy"])
    assert config.kept_retain_prompts() == ["a catalogue", "a dog"]
    assert "a photo of a cat" not in AdvUnlearn(concepts=["cat"])._retain  # the COCO object prompts, filtered
    assert AdvUnlearn(concepts=["cat"], retain_weight=0)._retain == []


@pytest.mark.parametrize("settings, fragment", [
    (dict(component="ffn"), "component must be one of"),
    (dict(attack_method="fgsm"), "attack_method must be one of"),
    (dict(attack_init="zero"), "attack_init must be one of"),
    (dict(attack_steps=-1), "attack steps must be a whole number of 0 or more"),
    (dict(attack_tokens=0), "attack tokens must be greater than 0"),
    (dict(layers=["first"]), "layers must be a list of text-encoder layer numbers"),
    (dict(retain_weight=-0.5), "retain weight must be 0 or more"),
    (dict(retain_prompts=["a red circle"]), "has no retain prompt that leaves the concepts out"),
])
def test_bad_settings_are_refused_in_one_sentence(settings, fragment):
    with pytest.raises(VeilError, match=fragment) as error:
        AdvUnlearnConfig(concepts=["circle"], **settings)
    assert str(error.value).replace("e.g. ", "").count(". ") == 0 and str(error.value).endswith(".")


def test_cli_refuses_bad_settings_and_sdxl(tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--method", "advunlearn", "--concept", "circle", "--model", "tiny",
                           "--set", "component=ffn", "--out", tmp_path / "x")
    assert_one_sentence_error(code, err, "component must be one of")
    code, _, err = run_cli(capsys, "erase", "--method", "advunlearn", "--concept", "circle", "--model", "tiny",
                           "--set", "layers=[5]", "--steps", "1", "--out", tmp_path / "y")
    assert_one_sentence_error(code, err, "layers names layer 5")
    from veil.architectures import build_random_pipeline

    with pytest.raises(VeilError, match="SDXL's two encoders are not supported"):
        AdvUnlearn(concepts=["cat"]).attach(build_random_pipeline("sdxl", reduced=True))


def test_plain_weight_unlearns_the_prompt_without_its_adversarial_tokens_too(tiny_pipe):
    generator = torch.Generator().manual_seed(0)
    method = AdvUnlearn(concepts=["circle"], **{**FAST, "warmup_steps": 0, "plain_weight": 2.0})
    method.attach(tiny_pipe)
    try:
        batch = method.make_batch(tiny_pipe, generator)
        assert batch["plain"] is not None and batch["plain"].slots.numel() == 0 and batch["template"].slots.numel() == 1
        with_plain = float(method.loss(tiny_pipe, batch).detach())
        without = float(method.loss(tiny_pipe, {**batch, "plain": None}).detach())
        # The plain term is the same negative-guidance loss on the same latents, under the plain prompt's states.
        from veil.token_slots import encode

        n = batch["n"]
        with torch.no_grad():
            states = encode(tiny_pipe, batch["plain"]).expand(n, -1, -1)
            pred = tiny_pipe.unet(batch["latents"][:n], batch["timesteps"][:n], encoder_hidden_states=states).sample
        plain = float(torch.nn.functional.mse_loss(pred, batch["target"]))
        assert with_plain == pytest.approx(without + 2.0 * plain, rel=1e-4)
    finally:
        method.detach(tiny_pipe)


def test_unconditional_weight_keeps_the_empty_prompts_prediction(tiny_pipe):
    generator = torch.Generator().manual_seed(0)
    method = AdvUnlearn(concepts=["circle"], **{**FAST, "unconditional_weight": 3.0})
    method.attach(tiny_pipe)
    try:
        batch = method.make_batch(tiny_pipe, generator)
        n = batch["n"]
        with torch.no_grad(), method.disabled(tiny_pipe):
            empty = veil.training.sampling.encode_prompts(tiny_pipe, [""]).expand(n, -1, -1)
            wanted = tiny_pipe.unet(batch["latents"][:n], batch["timesteps"][:n], encoder_hidden_states=empty).sample
        torch.testing.assert_close(batch["uncond_target"], wanted, rtol=1e-4, atol=1e-5)
        assert float(method.loss(tiny_pipe, batch).detach()) == pytest.approx(
            float(method.loss(tiny_pipe, {**batch, "uncond_target": None}).detach()), rel=1e-5)  # untrained: the term is 0
        with torch.no_grad():
            for param in method.trainable_parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))  # an edit that moves the empty prompt
        moved = float(method.loss(tiny_pipe, batch).detach()) - float(method.loss(tiny_pipe, {**batch, "uncond_target": None}).detach())
        from veil.token_slots import PromptTemplate, encode

        with torch.no_grad():
            states = encode(tiny_pipe, PromptTemplate(tiny_pipe.tokenizer)).expand(n, -1, -1)
            pred = tiny_pipe.unet(batch["latents"][:n], batch["timesteps"][:n], encoder_hidden_states=states).sample
        assert moved > 0 and moved == pytest.approx(3.0 * float(torch.nn.functional.mse_loss(pred, wanted)), rel=1e-3)
    finally:
        method.detach(tiny_pipe)


def test_adversarial_tokens_stay_within_the_token_embeddings_norm(tiny_pipe):
    from veil.token_slots import input_table

    method = AdvUnlearn(concepts=["circle"], **{**FAST, "attack_init": "latest", "attack_steps": 30, "attack_learning_rate": 1.0})
    method.attach(tiny_pipe)
    try:
        method._step = method.config.warmup_steps
        for _ in range(3):
            batch = method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))
        radius = float(input_table(tiny_pipe).norm(dim=1).max())
        assert float(batch["adversary"].norm(dim=-1).max()) <= radius * (1 + 1e-5)
    finally:
        method.detach(tiny_pipe)
