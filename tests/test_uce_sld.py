import pytest
import torch

import veil
from veil.methods.uce import UCE
from veil.methods.sld import SLD, SLDConfig
from veil.training.sampling import encode_prompts

from .conftest import render, saved_and_reloaded


def _straightforward_uce(W, erase, guide, preserve, lam, gamma):
    """The UCE formula written out term by term with an explicit inverse (the reference)."""
    d = W.shape[1]
    numerator = gamma * W.double()
    denominator = gamma * torch.eye(d, dtype=torch.float64)
    for c, g in zip(erase.double(), guide.double()):
        numerator = numerator + torch.outer(W.double() @ g, c)
        denominator = denominator + torch.outer(c, c)
    for c in preserve.double():
        numerator = numerator + lam * torch.outer(W.double() @ c, c)
        denominator = denominator + lam * torch.outer(c, c)
    return (numerator @ torch.linalg.inv(denominator)).float()


def test_uce_matches_the_formula_computed_independently(tiny_pipe):
    method = UCE(concepts=["circle"], preserve_concepts=["square", "star"], preserve_scale=0.5, regularization=0.1,
                 token_selection="all")
    originals = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    method.fit(tiny_pipe)
    states = lambda prompts: encode_prompts(tiny_pipe, prompts)[:, 1:].reshape(-1, 32)  # noqa: E731
    erase, guide, preserve = states(["circle"]), states([""]), states(["square", "star"])
    stored = {k[len("unet."):]: v for k, v in method.state_dict().items()}
    assert len(stored) == 2 * sum(1 for n, _ in tiny_pipe.unet.named_modules() if n.endswith("attn2"))
    for name, new in stored.items():
        expected = _straightforward_uce(originals[name], erase, guide, preserve, lam=0.5, gamma=0.1)
        torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-5)


def test_uce_with_synonyms_and_templates_matches_the_formula(tiny_pipe):
    templates = ["{}", "a red {} on a plain background"]
    method = UCE(concepts=["circle"], synonyms={"circle": ["disk"]}, templates=templates, guide="shape",
                 preserve_concepts=["square"], regularization=0.1, token_selection="all")
    originals = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    method.fit(tiny_pipe)
    states = lambda prompts: encode_prompts(tiny_pipe, prompts)[:, 1:].reshape(-1, 32)  # noqa: E731
    erase = states([t.format(p) for p in ("circle", "disk") for t in templates])
    guide = states([t.format("shape") for _ in range(2) for t in templates])
    preserve = states([t.format("square") for t in templates])
    for name, new in {k[len("unet."):]: v for k, v in method.state_dict().items()}.items():
        expected = _straightforward_uce(originals[name], erase, guide, preserve, lam=1.0, gamma=0.1)
        torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(veil.VeilError, match="exactly one"):
        UCE(concepts=["circle"], templates=["a circle"])


def test_uce_sends_the_concept_to_the_guide_and_keeps_preserved(tiny_pipe):
    method = UCE(concepts=["circle"], preserve_concepts=["square"], regularization=0.01, token_selection="all")
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    veil.fit(method, tiny_pipe)
    concept, guide, kept = (encode_prompts(tiny_pipe, [p])[0, 1:] for p in ("circle", "", "square"))
    for name, param in tiny_pipe.unet.named_parameters():
        if "attn2.to_v.weight" in name:
            moved_to_guide = (concept @ param.T - guide @ before[name].T).norm() / (guide @ before[name].T).norm()
            preserved = (kept @ param.T - kept @ before[name].T).norm() / (kept @ before[name].T).norm()
            assert moved_to_guide < 0.2 and preserved < 0.2, (moved_to_guide, preserved)


def test_uce_attach_detach_and_round_trip(tmp_path, tiny_pipe):
    original = render(tiny_pipe)
    method = UCE(concepts=["circle"])
    method.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe), original)  # unfitted: identity
    method.detach(tiny_pipe)
    veil.fit(method, tiny_pipe)
    edited = render(tiny_pipe)
    assert not torch.equal(edited, original)
    saved_and_reloaded(method, tiny_pipe, tmp_path / "uce", original, edited)


def test_sld_presets_fill_fields_and_explicit_values_win():
    config = SLDConfig(concepts=["nudity"], preset="MEDIUM")
    assert (config.warmup_steps, config.sld_guidance_scale, config.threshold, config.momentum_scale, config.momentum_beta) == (10, 1000.0, 0.01, 0.3, 0.4)
    assert SLDConfig(concepts=["x"], preset="max", warmup_steps=3).warmup_steps == 3


def test_sld_hooks_sampling_and_detaches_cleanly(tmp_path, tiny_pipe):
    original = render(tiny_pipe, steps=6)
    method = SLD(concepts=["a red circle"], preset="max")
    veil.fit(method, tiny_pipe)
    guided = render(tiny_pipe, steps=6)
    assert not torch.equal(guided, original)
    with method.disabled(tiny_pipe):
        assert torch.equal(render(tiny_pipe, steps=6), original)
    assert torch.equal(render(tiny_pipe, steps=6), guided)  # state resets between sampling runs
    veil.Artifact.from_method(method, tiny_pipe).save(tmp_path / "sld")
    method.detach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, steps=6), original)
    artifact = veil.load_artifact(tmp_path / "sld")
    assert artifact.tensors == {} and artifact.manifest["config"]["preset"] == "max"
    artifact.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, steps=6), guided)


def test_sld_warmup_delays_the_guidance(tiny_pipe):
    original = render(tiny_pipe, steps=4)
    method = SLD(concepts=["a red circle"], preset="max", warmup_steps=10)  # longer than the run
    method.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, steps=4), original)
