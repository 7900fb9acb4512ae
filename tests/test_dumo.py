"""DuMo: EPR residuals through the frozen UNet, TLMO, the prompt gate, persistence, the authors' layout."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import veil
from veil.methods.base import Stage
from veil.methods.dumo import DuMo, DuMoEPR, load_authors_checkpoint
from veil.methods.dumo.compat import authors_checkpoint_to_artifact
from veil.training.loop import train_stage
from veil.training.sampling import encode_prompts

from .conftest import render

UNRELATED = "the quick brown fox jumps over the lazy dog"


def _perturb(method, seed=0, scale=0.05):
    """Give every EPR non-zero output convolutions and a non-trivial time table, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for concept, epr in method.eprs.items():
            for conv in [*epr.dumo_down_blocks, epr.dumo_mid_block]:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * scale)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * scale)
            table = method.time_scales[concept]
            table.copy_(torch.rand(table.shape, generator=generator) * 2)


def test_epr_mirrors_the_unet_encoder(tiny_pipe):
    unet = tiny_pipe.unet
    epr = DuMoEPR.from_unet(unet)
    # Slots derive from the config: conv_in + (1 layer + downsample) + (1 layer) + mid.
    assert epr.num_slots == 5 and epr.num_down_residuals == 4 and len(epr.slot_labels()) == 5
    names = {name.split(".")[0] for name, _ in epr.named_parameters()}
    assert names == {"conv_in", "time_embedding", "down_blocks", "mid_block", "dumo_down_blocks", "dumo_mid_block"}
    # With identity output convolutions the residuals are exactly the UNet's own skip features.
    with torch.no_grad():
        for conv in [*epr.dumo_down_blocks, epr.dumo_mid_block]:
            conv.weight.copy_(torch.eye(conv.weight.shape[0])[:, :, None, None])
    features = []
    hooks = [unet.conv_in.register_forward_hook(lambda m, i, o: features.append(o))]
    hooks += [b.register_forward_hook(lambda m, i, o: features.extend(o[1])) for b in unet.down_blocks]
    hooks += [unet.mid_block.register_forward_hook(lambda m, i, o: features.append(o))]
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32)
    with torch.no_grad():
        unet(sample, torch.tensor([10, 900]), encoder_hidden_states=context)
        down, mid = epr(sample, torch.tensor([10, 900]), context)
    for hook in hooks:
        hook.remove()
    for ours, theirs in zip([*down, mid], features):
        torch.testing.assert_close(ours, theirs)


def test_identity_at_init_and_detach_restores(tiny_pipe):
    before = render(tiny_pipe, "a circle")
    method = DuMo(concepts=["circle"], gate=False)
    method.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, "a circle"), before)  # zero convolutions: bit for bit
    assert method.stats["epr_forward_calls"] > 0
    _perturb(method)
    changed = render(tiny_pipe, "a circle")
    assert not torch.equal(changed, before)
    with method.disabled(tiny_pipe):
        assert torch.equal(render(tiny_pipe, "a circle"), before)
    method.detach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, "a circle"), before)
    method.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, "a circle"), changed)


def test_gate_skips_unrelated_prompts(tiny_pipe):
    prompts = ["a circle", UNRELATED]
    before, alone = render(tiny_pipe, prompts), render(tiny_pipe, UNRELATED)
    method = DuMo(concepts=["circle"], gate_threshold=0.7)  # gate on by default for objects; the skip is veil's
    method.attach(tiny_pipe)
    _perturb(method)

    assert torch.equal(render(tiny_pipe, UNRELATED, steps=3), alone)
    assert method.stats == {"epr_forward_calls": 0, "epr_skipped": 3}  # no EPR forward at all

    # A mixed batch: the unrelated prompt's image is bit-for-bit the original, the concept's is not.
    mixed = render(tiny_pipe, prompts)
    assert torch.equal(mixed[1], before[1]) and not torch.equal(mixed[0], before[0])
    assert method.stats["epr_forward_calls"] == 3

    # Classifier-free guidance pairs: the empty prompt's half takes the conditional prompt's gate.
    cond = encode_prompts(tiny_pipe, ["a circle", UNRELATED])
    uncond = encode_prompts(tiny_pipe, ["", ""])
    latents = torch.randn(2, 4, 8, 8)
    gates = method.gates(torch.cat([latents, latents]), torch.cat([uncond, cond]))["circle"]
    assert gates[0] == gates[2] == 1.0 and gates[1] == gates[3] == 0.0


def test_token_skip_decides_on_the_best_token_match_and_keeps_the_gate_scale(tiny_pipe):
    """skip_on=tokens: a prompt runs the eraser when one of its content tokens matches one of the concept's (here the
    concept's own token, cosine 1 in a causal encoder's first content position), and then at the gate's scale;
    skip_on=either: when the gate or the tokens say so."""
    alone = render(tiny_pipe, UNRELATED, steps=3)
    method = DuMo(concepts=["circle"], skip_on="tokens", token_skip_threshold=0.999)
    method.attach(tiny_pipe)
    _perturb(method)
    cond = encode_prompts(tiny_pipe, ["circle", UNRELATED])
    latents = torch.randn(2, 4, 8, 8)
    gates = method.gates(latents, cond)["circle"]
    method.config.skip_on, method.config.gate_threshold = "gate", 0.0
    plain = method.gates(latents, cond)["circle"]
    assert gates[0] == plain[0] > 0 and gates[1] == 0.0 < plain[1]  # the unrelated prompt skips; the scale is the gate's
    method.config.skip_on, method.config.gate_threshold = "either", 1.01  # the gate never opens: tokens alone decide
    assert torch.equal(method.gates(latents, cond)["circle"], gates)
    method.config.gate_threshold = 0.0  # the gate always opens: nothing skips
    assert torch.equal(method.gates(latents, cond)["circle"], plain)

    method.config.skip_on = "tokens"
    assert torch.equal(render(tiny_pipe, UNRELATED, steps=3), alone)  # bit-for-bit the original
    assert method.stats == {"epr_forward_calls": 0, "epr_skipped": 3}
    method.detach(tiny_pipe)
    with pytest.raises(veil.VeilError, match="skip_on"):
        DuMo(concepts=["circle"], skip_on="words")


def test_gate_is_computed_once_per_generation(tiny_pipe, monkeypatch):
    method = DuMo(concepts=["circle"], gate_threshold=0.7)
    method.attach(tiny_pipe)
    calls = []
    compute = method._gate._compute
    monkeypatch.setattr(method._gate, "_compute", lambda *a: calls.append(1) or compute(*a))
    render(tiny_pipe, [UNRELATED], steps=3)
    assert len(calls) == 1 and method.stats["epr_skipped"] == 3  # the same text states at every step
    render(tiny_pipe, ["a circle"], steps=2)
    assert len(calls) == 2 and method.stats["epr_forward_calls"] == 2  # a new prompt: computed afresh
    method.detach(tiny_pipe)


def test_gate_opens_for_synonyms_and_anchors_leave_them_out(tiny_pipe):
    method = DuMo(concepts=["circle"], synonyms={"circle": ["round disk"]}, gate_threshold=0.7,
                  anchor_prompts=["a round disk on a table", "a disk", "a square", "a circle"])
    method.attach(tiny_pipe)
    cond = encode_prompts(tiny_pipe, ["a round disk", UNRELATED])
    uncond = encode_prompts(tiny_pipe, ["", ""])
    latents = torch.randn(2, 4, 8, 8)
    gates = method.gates(torch.cat([latents, latents]), torch.cat([uncond, cond]))["circle"]
    assert gates[2] == 1.0 and gates[3] == 0.0  # the synonym's tokens open the gate; the unrelated prompt stays shut
    assert method.anchor_pool("circle") == ["a disk", "a square"]  # whole phrases, not single shared words
    method.detach(tiny_pipe)


def test_nudity_runs_ungated():
    assert not DuMo(concepts=["nudity"]).config.gate_enabled
    assert DuMo(concepts=["Van Gogh"]).config.gate_enabled


def test_paper_mode_scales_every_prompt_by_its_gate_and_skips_none(tiny_pipe):
    """The release applies multiplier × residuals to every prompt: an unrelated prompt is changed, by less."""
    method = DuMo(concepts=["circle"])
    assert (method.config.gate_threshold, method.config.skip_on) == (0.0, "gate")
    method.attach(tiny_pipe)
    _perturb(method)
    cond = encode_prompts(tiny_pipe, ["a circle", UNRELATED])
    sample, timesteps = torch.randn(2, 4, 8, 8), torch.tensor([300, 300])
    gate = method.gates(sample, cond)["circle"]
    assert 0 < gate[1] < gate[0]
    down, mid = method.residuals(sample, timesteps, cond)
    with method._training_view("circle"):  # ungated: the residuals at full strength
        full_down, full_mid = method.residuals(sample, timesteps, cond)
    for scaled, full in zip([*down, mid], [*full_down, full_mid]):
        torch.testing.assert_close(scaled, full * gate[:, None, None, None])
    assert method.stats["epr_skipped"] == 0
    method.detach(tiny_pipe)


def test_time_scale_can_be_left_out_as_the_release_nudity_script_does(tiny_pipe, tmp_path):
    method = DuMo(concepts=["circle"], gate=False)
    method.attach(tiny_pipe)
    _perturb(method)
    sample, timesteps = torch.randn(1, 4, 8, 8), torch.tensor([420])
    cond = encode_prompts(tiny_pipe, ["a circle"])
    scaled = method.residuals(sample, timesteps, cond)
    method.config.apply_time_scale = False
    plain = method.residuals(sample, timesteps, cond)
    row = method.time_scales["circle"][420 // 50]
    for i, (a, b) in enumerate(zip([*scaled[0], scaled[1]], [*plain[0], plain[1]])):
        torch.testing.assert_close(a, b * row[i])
    method.detach(tiny_pipe)

    # An authors' checkpoint of an ungated concept loads on the nudity path: neither table nor gate.
    state = {k: v.clone().contiguous() for k, v in method.eprs["circle"].state_dict().items()}
    _write_authors_folder(tmp_path / "nudity", state, method.time_scale(), {"_class_name": "DuMo"})
    nudity = load_authors_checkpoint(tmp_path / "nudity")
    assert not nudity.config.apply_time_scale and not nudity.config.gate_enabled
    assert load_authors_checkpoint(tmp_path / "nudity", apply_time_scale=True).config.apply_time_scale
    assert load_authors_checkpoint({"circle": tmp_path / "nudity"}).config.apply_time_scale


def test_export_dumo_authors_and_load_the_folder_through_artifact(tiny_pipe, tmp_path, capsys):
    from veil.cli.common import open_artifact
    from veil.cli.main import main

    method = DuMo(concepts=["circle"])
    method.attach(tiny_pipe)
    _perturb(method, seed=5)
    expected = render(tiny_pipe, ["a circle", UNRELATED])
    veil.Artifact.from_method(method, tiny_pipe).save(tmp_path / "erased")
    method.detach(tiny_pipe)

    out = tmp_path / "export" / "circle"  # the folder's name is the concept's, as in the release
    code = main(["export", "--artifact", str(tmp_path / "erased"), "--format", "dumo-authors", "--model", "tiny",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["_class_name"] == "DuMo"
    np.testing.assert_array_equal(np.load(out / "time_scale.npy"), method.time_scale())

    artifact = open_artifact(out)  # the authors' layout through --artifact, in paper mode
    assert artifact.method_name == "dumo" and artifact.concepts == ["circle"]
    artifact.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, ["a circle", UNRELATED]), expected)
    artifact.detach(tiny_pipe)

    code = main(["generate", "--artifact", str(out), "--model", "tiny", "--prompt", "a circle", "--seeds", "0",
                 "--num-inference-steps", "2", "--out", str(tmp_path / "grid.png")])
    assert code == 0, capsys.readouterr().err

    esd = tmp_path / "esd"
    assert main(["erase", "--method", "uce", "--concept", "circle", "--model", "tiny", "--out", str(esd)]) == 0
    capsys.readouterr()
    code = main(["export", "--artifact", str(esd), "--format", "dumo-authors", "--model", "tiny", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "Only DuMo artifacts" in err and "Traceback" not in err and not (tmp_path / "x").exists()


def test_several_concepts_sum_their_residuals(tiny_pipe):
    method = DuMo(concepts=["circle", "square"], gate=False)
    method.attach(tiny_pipe)
    _perturb(method)
    sample, timesteps = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    context = encode_prompts(tiny_pipe, ["a circle", "a square"])
    with torch.no_grad():
        down, mid = method.residuals(sample, timesteps, context)
        parts = []
        for concept in ("circle", "square"):
            with method._training_view(concept):
                parts.append(method.residuals(sample, timesteps, context))
    for i, total in enumerate(down):
        torch.testing.assert_close(total, parts[0][0][i] + parts[1][0][i])
    torch.testing.assert_close(mid, parts[0][1] + parts[1][1])
    # TLMO: the row is t // 50, per sample.
    with torch.no_grad(), method._training_view("circle"):
        method.time_scales["circle"][2].zero_()  # t = 100..149
        down, mid = method.residuals(sample, timesteps, context)
    assert mid[0].abs().max() == 0 and mid[1].abs().max() > 0


def test_save_load_round_trip(tiny_pipe, tmp_path):
    method = DuMo(concepts=["circle"], gate=False)
    method.attach(tiny_pipe)
    _perturb(method)
    expected = render(tiny_pipe, "a circle")
    artifact = veil.Artifact.from_method(method, tiny_pipe)
    artifact.save(tmp_path / "erased")
    method.detach(tiny_pipe)
    table = np.load(tmp_path / "erased" / "time_scale.npy")
    assert table.dtype == np.float32 and table.shape == (20, 5)
    np.testing.assert_array_equal(table, method.time_scale())
    assert all(k.startswith("dumo.circle.") for k in artifact.tensors)

    loaded = veil.load_artifact(tmp_path / "erased")
    restored = loaded.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, "a circle"), expected)
    loaded.detach(tiny_pipe)
    assert restored.slot_labels()[0].startswith("conv_in")


def test_stage1_lowers_the_esd_loss_and_stage2_changes_only_the_table(tiny_pipe):
    method = DuMo(
        concepts=["a red circle"], max_train_steps=40, learning_rate=5e-4, ddim_steps=8, samples_per_trajectory=4,
        tlmo_max_train_steps=8, tlmo_learning_rate=0.5,
    )
    assert method.stages() == [Stage("epr", 40), Stage("tlmo", 8)]
    method.set_stage("epr")
    method.attach(tiny_pipe)
    held_out = method.make_batch(tiny_pipe, torch.Generator().manual_seed(123))  # targets from the frozen UNet
    with torch.no_grad():
        first = float(method.loss(tiny_pipe, held_out, "epr"))
    cost = train_stage(method, tiny_pipe, "epr", progress=False)
    with torch.no_grad():
        last = float(method.loss(tiny_pipe, held_out, "epr"))
    assert len(cost["losses"]) == 40 and last < 0.7 * first, (first, last)
    assert torch.equal(method.time_scales["a red circle"], torch.ones(20, 5))  # S fixed in stage 1

    epr_before = {k: v.clone() for k, v in method.eprs["a red circle"].state_dict().items()}
    cost = train_stage(method, tiny_pipe, "tlmo", progress=False)
    assert len(cost["losses"]) == 8 and "tlmo" in cost["losses"][0]
    for name, tensor in method.eprs["a red circle"].state_dict().items():
        assert torch.equal(tensor, epr_before[name]), name
    table = method.time_scales["a red circle"]
    assert not torch.equal(table, torch.ones(20, 5)) and bool((table >= 0).all())


def test_erase_command_runs_both_stages(tmp_path, capsys):
    from veil.cli.main import main

    out = tmp_path / "erased"
    code = main(["erase", "--method", "dumo", "--concept", "circle", "--model", "tiny", "--steps", "2", "--lr", "1e-4",
                 "--set", "tlmo_max_train_steps=2", "--set", "ddim_steps=4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "veil.json").read_text())
    assert manifest["method"] == "dumo" and manifest["cost"]["steps"] == 4
    assert set(manifest["cost"]["stages"]) == {"epr", "tlmo"} and manifest["config"]["max_train_steps"] == 2
    assert np.load(out / "time_scale.npy").shape == (20, 5)


def _write_authors_folder(folder, state, table, config, weights="safetensors"):
    folder.mkdir()
    if weights == "safetensors":
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    else:
        torch.save(state, folder / "diffusion_pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    np.save(folder / "time_scale.npy", table)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_authors_checkpoint_round_trip(tiny_pipe, tmp_path, weights):
    reference = DuMo(concepts=["circle"], gate=False)
    reference.attach(tiny_pipe)
    _perturb(reference, seed=3)
    expected = render(tiny_pipe, "a circle")
    reference.detach(tiny_pipe)

    # The authors' layout, written by hand: their parameter names, config.json, time_scale.npy.
    epr = reference.eprs["circle"]
    state = {k: v.clone().contiguous() for k, v in epr.state_dict().items()}
    assert {f"dumo_down_blocks.{i}.weight" for i in range(4)} <= set(state) and "dumo_mid_block.bias" in state
    config = {"_class_name": "DuMo", "block_out_channels": [32, 64], "layers_per_block": 1}
    _write_authors_folder(tmp_path / "circle", state, reference.time_scale(), config, weights)

    method = load_authors_checkpoint(tmp_path / "circle", gate=False)
    assert method.config.concepts == ["circle"]
    method.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, "a circle"), expected)
    np.testing.assert_array_equal(method.time_scale(), reference.time_scale())
    method.detach(tiny_pipe)

    artifact = authors_checkpoint_to_artifact({"circle": tmp_path / "circle"}, tiny_pipe, gate=False)
    artifact.save(tmp_path / "artifact")
    loaded = veil.load_artifact(tmp_path / "artifact")
    loaded.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, "a circle"), expected)
    loaded.detach(tiny_pipe)


def test_authors_checkpoint_for_another_model_is_refused(tiny_pipe, tmp_path):
    state = {"conv_in.weight": torch.zeros(320, 4, 3, 3), "dumo_mid_block.weight": torch.zeros(1280, 1280, 1, 1)}
    _write_authors_folder(tmp_path / "vangogh", state, np.ones((20, 13), np.float32), {"block_out_channels": [320, 640, 1280, 1280]})
    with pytest.raises(veil.VeilError, match="block_out_channels"):
        authors_checkpoint_to_artifact(tmp_path / "vangogh", tiny_pipe)
    method = load_authors_checkpoint(tmp_path / "vangogh")
    with pytest.raises(veil.VeilError, match="another model"):
        method.attach(tiny_pipe)


def test_config_errors_name_the_field():
    with pytest.raises(veil.VeilError, match="gate_threshold"):
        DuMo(concepts=["circle"], gate_threshold=-1)
    with pytest.raises(veil.VeilError, match="anchor_prompts"):
        DuMo(concepts=["circle"], anchor_prompts=[])
    with pytest.raises(veil.VeilError, match="stage"):
        DuMo(concepts=["circle"]).set_stage("decoder")
    assert DuMo(concepts=["circle"], tlmo_max_train_steps=0).stages() == [Stage("epr", 1000)]
    assert all("circle" not in p for p in DuMo(concepts=["circle"]).anchor_pool("circle"))
    with pytest.raises(veil.VeilError, match="epr_preserve_concepts is empty"):
        DuMo(concepts=["circle"], epr_preserve_weight=1.0)
    with pytest.raises(veil.VeilError, match="both erased and preserved"):
        DuMo(concepts=["circle"], epr_preserve_weight=1.0, epr_preserve_concepts=["circle", "square"])


def test_stage1_preservation_keeps_another_concept_in_the_same_context(tiny_pipe):
    """With epr_preserve_weight, a stage-1 batch also holds a preserved concept in the step's own context, with
    the original model's prediction for it as the target, and the loss adds that term with its weight."""
    import torch.nn.functional as F

    method = DuMo(concepts=["circle"], contexts=["a red {} on a table"], context_probability=1.0, ddim_steps=4,
                  samples_per_trajectory=2, epr_preserve_weight=0.5, epr_preserve_concepts=["square"])
    method.attach(tiny_pipe)
    _perturb(method)
    batch = method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))
    keep = encode_prompts(tiny_pipe, ["a red square on a table"])
    torch.testing.assert_close(batch["preserve_cond"][:1], keep, atol=1e-5, rtol=1e-5)
    latents, timesteps = batch["latents"], batch["timesteps"]
    size = latents.shape[0]
    with torch.no_grad():
        with method.disabled(tiny_pipe):
            original = tiny_pipe.unet(latents, timesteps, encoder_hidden_states=keep.expand(size, -1, -1)).sample
        torch.testing.assert_close(batch["preserve_target"], original, atol=1e-4, rtol=1e-4)
        with method._training_view("circle"):
            erased = tiny_pipe.unet(latents, timesteps, encoder_hidden_states=batch["cond"]).sample
            kept = tiny_pipe.unet(latents, timesteps, encoder_hidden_states=batch["preserve_cond"]).sample
        expected = F.mse_loss(erased, batch["target"]) + 0.5 * F.mse_loss(kept, original)
        assert float((kept - original).abs().max()) > 1e-4  # the perturbed EPR moves it: the term is not trivially 0
        torch.testing.assert_close(method.loss(tiny_pipe, batch), expected, atol=1e-5, rtol=1e-4)
    method.detach(tiny_pipe)


def test_an_interrupted_two_stage_run_resumes_to_the_same_weights(tmp_path):
    from veil.models import build_tiny_pipeline

    settings = dict(concepts=["circle"], max_train_steps=4, learning_rate=5e-4, ddim_steps=4,
                    tlmo_max_train_steps=3, tlmo_learning_rate=0.1)
    straight = DuMo(**settings)
    veil.fit(straight, build_tiny_pipeline(), progress=False)

    interrupted = DuMo(**settings)
    cost = veil.fit(interrupted, build_tiny_pipeline(), work_dir=tmp_path, checkpoint_every=2, stop_after=3, progress=False)
    assert cost["stages"] == {"epr": {"steps": 3, "seconds": cost["stages"]["epr"]["seconds"]}}  # stopped inside stage 1
    assert not (tmp_path / "epr" / "done.safetensors").exists()
    resumed = DuMo(**settings)
    veil.fit(resumed, build_tiny_pipeline(), work_dir=tmp_path, resume=True, checkpoint_every=2, progress=False)
    expected, actual = straight.state_dict(), resumed.state_dict()
    assert set(expected) == set(actual) and all(torch.equal(expected[k], actual[k]) for k in expected)
