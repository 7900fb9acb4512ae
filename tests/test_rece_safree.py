"""RECE and SAFREE: closed-form properties, the hooks, attach / detach bit for bit, refusals."""

import pytest
import torch

import veil
from veil.methods.rece import RECE, rece_adversarial_embedding
from veil.methods.rece.method import projection_gap
from veil.methods.safree import SAFREE, concept_projection, low_frequency_reattention, safe_token_states
from veil.methods.uce import UCE
from veil.training.sampling import encode_prompts

from .conftest import render


def _weights(method):
    return {k[len("unet."):]: v for k, v in method.state_dict().items()}


def test_rece_adversarial_embedding_solves_the_ridge_problem():
    torch.manual_seed(0)
    d = 6
    originals = {"a": torch.randn(5, d), "b": torch.randn(4, d)}
    edited = {k: w + 0.3 * torch.randn_like(w) for k, w in originals.items()}
    states = torch.randn(3, d)
    rho = 0.2
    found = rece_adversarial_embedding(originals, edited, states, rho)
    # The same least-squares problem, stacked and solved by lstsq: [W'_a; W'_b; √ρ I] e = [W_a c; W_b c; 0].
    system = torch.cat([edited["a"], edited["b"], rho ** 0.5 * torch.eye(d)]).double()
    for c, e in zip(states, found):
        target = torch.cat([originals["a"] @ c, originals["b"] @ c, torch.zeros(d)]).double()
        expected = torch.linalg.lstsq(system, target[:, None]).solution[:, 0]
        torch.testing.assert_close(e.double(), expected, rtol=1e-4, atol=1e-5)


def test_rece_erases_the_embedding_that_regenerates_the_concept(tiny_pipe):
    config = dict(concepts=["circle"], preserve_concepts=["square"], regularization=0.1, token_selection="all")
    originals = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    uce = UCE(**config)
    uce.fit(tiny_pipe)
    rece = RECE(**config, epochs=1, embedding_regularization=0.01)
    rece.fit(tiny_pipe)
    after_uce, after_rece = _weights(uce), _weights(rece)
    base = {n: originals[n] for n in after_uce}
    concept = encode_prompts(tiny_pipe, ["circle"])[:, 1:].reshape(-1, 32)
    adversarial = rece_adversarial_embedding(base, after_uce, concept, 0.01)
    # Before RECE's round the derived embedding makes UCE's weights say what the original said of circle ...
    before = projection_gap(base, after_uce, adversarial, concept)
    after = projection_gap(base, after_rece, adversarial, concept)
    assert before < 0.3 and after > 2 * before, (before, after)
    # ... and the concept itself stays erased (UCE's gap is kept or grows).
    assert projection_gap(base, after_rece, concept, concept) >= 0.9 * projection_gap(base, after_uce, concept, concept)


def test_rece_without_rounds_is_uce(tiny_pipe):
    uce = UCE(concepts=["circle"], token_selection="all", regularization=0.1)
    rece = RECE(concepts=["circle"], epochs=0)
    uce.fit(tiny_pipe)
    rece.fit(tiny_pipe)
    for name, tensor in _weights(uce).items():
        assert torch.equal(tensor, _weights(rece)[name])


def test_rece_attach_detach_and_round_trip(tmp_path, tiny_pipe):
    original = render(tiny_pipe)
    method = RECE(concepts=["circle", "square"])
    cost = veil.fit(method, tiny_pipe)
    assert len(cost["adversarial_gaps"]) == 3
    edited = render(tiny_pipe)
    assert not torch.equal(edited, original)
    veil.Artifact.from_method(method, tiny_pipe, cost).save(tmp_path / "rece")
    method.detach(tiny_pipe)
    assert torch.equal(render(tiny_pipe), original)
    artifact = veil.load_artifact(tmp_path / "rece")
    assert artifact.concepts == ["circle", "square"]
    artifact.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe), edited)


def test_safree_projection_removes_the_concept_subspace_from_trigger_tokens():
    torch.manual_seed(0)
    d = 8
    concept_dirs = torch.randn(2, d)
    proj = concept_projection(concept_dirs)
    states = torch.randn(5, d)  # start token, 3 word tokens, end token
    # Masking token 2 leaves the prompt far from the concept (it carried it); masking 1 or 3 leaves it close.
    masked = 0.05 * torch.randn(3, d) + torch.stack([concept_dirs[0], torch.zeros(d), concept_dirs[1]])
    masked[1] += 3 * torch.randn(d)
    safe, triggers, projected = safe_token_states(states, masked, proj, alpha=0.01)
    assert triggers.tolist() == [False, True, False]
    assert torch.equal(safe[[0, 1, 3, 4]], states[[0, 1, 3, 4]])  # every other position unchanged
    assert (safe[2].double() @ proj).norm() < 1e-4 * safe[2].norm()  # no component left in the concept subspace
    assert (states[2].double() @ proj).norm() > 0.1 * states[2].norm()
    # And it lies in the prompt's own input space (the span of the masked prompts' states), up to the projection.
    torch.testing.assert_close(projected[2].double(), (states[2].double() @ concept_projection(masked)) @ (torch.eye(d, dtype=torch.float64) - proj))


def test_safree_reattention_damps_only_raised_low_frequencies():
    torch.manual_seed(0)
    original = torch.randn(2, 3, 8, 8)
    raised = original + 5.0  # a raised mean: the DC component above the original's
    damped = low_frequency_reattention(raised, original, 0.2)
    assert damped.mean() < raised.mean() - 1.0
    # A scale of 1 changes nothing; maps too small for the 2 × 2 box are left alone.
    torch.testing.assert_close(low_frequency_reattention(raised, original, 1.0), raised, rtol=1e-5, atol=1e-5)
    assert torch.equal(low_frequency_reattention(raised[..., :1, :], original[..., :1, :], 0.2), raised[..., :1, :])


def test_safree_hooks_sampling_and_detaches_cleanly(tmp_path, tiny_pipe):
    original = render(tiny_pipe, prompt="circle", steps=6)
    other = render(tiny_pipe, prompt="a red circle", steps=6)
    method = SAFREE(concepts=["circle"])
    veil.fit(method, tiny_pipe)
    guarded = render(tiny_pipe, prompt="circle", steps=6)
    assert not torch.equal(guarded, original)  # one token alone always triggers
    assert torch.equal(render(tiny_pipe, prompt="a red circle", steps=6), other)  # no trigger token: untouched
    with method.disabled(tiny_pipe):
        assert torch.equal(render(tiny_pipe, prompt="circle", steps=6), original)
    assert torch.equal(render(tiny_pipe, prompt="circle", steps=6), guarded)  # the step count restarts per run
    veil.Artifact.from_method(method, tiny_pipe).save(tmp_path / "safree")
    method.detach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, prompt="circle", steps=6), original)
    artifact = veil.load_artifact(tmp_path / "safree")
    assert artifact.tensors == {}
    artifact.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe, prompt="circle", steps=6), guarded)


def test_safree_parts_switch_off(tiny_pipe):
    original = render(tiny_pipe, prompt="circle", steps=6)
    outputs = []
    for settings in (dict(re_attention=False), dict(self_validation=False), dict(max_safe_steps=0, re_attention=False)):
        method = SAFREE(concepts=["circle"], **settings)
        method.attach(tiny_pipe)
        outputs.append(render(tiny_pipe, prompt="circle", steps=6))
        method.detach(tiny_pipe)
    assert all(not torch.equal(o, original) for o in outputs)
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize("method,settings,fragment", [
    ("rece", dict(epochs=-1), "epochs must be"),
    ("rece", dict(embedding_regularization=0), "embedding regularization must be greater than 0"),
    ("safree", dict(alpha=-1), "alpha must be"),
    ("safree", dict(re_attention_scales=[2, 0.1]), "re_attention_scales takes two numbers"),
    ("safree", dict(max_safe_steps=1.5), "max safe steps"),
])
def test_bad_settings_are_refused_in_one_sentence(method, settings, fragment):
    with pytest.raises(veil.VeilError, match=fragment) as error:
        veil.get_method(method)(concepts=["circle"], **settings)
    message = str(error.value).replace("e.g. ", "")
    assert message.count(". ") == 0 and "\n" not in message and message.endswith(".")


@pytest.mark.parametrize("method", ["rece", "safree", "uce"])
def test_several_concepts_make_one_artifact(tmp_path, capsys, method):
    from veil.cli.main import main

    out = tmp_path / method
    assert main(["erase", "--method", method, "--concept", "circle", "--concept", "square", "--model", "tiny", "--out", str(out)]) == 0
    assert veil.load_artifact(out).concepts == ["circle", "square"]
    code = main(["erase", "--method", method, "--concept", "circle", "--concept", " ", "--model", "tiny", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("name", ["safree", "sld"])
def test_hook_methods_let_a_gradient_step_through_the_model_unchanged(tiny_pipe, name):
    # An attack differentiates a loss through the protected model: the hooks must pass such a call through
    # (with its gradients), not treat its batch as a sampling step's guidance halves.
    method = veil.get_method(name)(concepts=["circle"])
    method.attach(tiny_pipe)
    render(tiny_pipe, prompt="circle", steps=3)  # a sampling run first: the pipeline then guides, SAFREE has cached "circle"
    states = encode_prompts(tiny_pipe, ["circle"])
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    timestep = torch.tensor([999, 999])

    def step():
        context = states.detach().expand(2, -1, -1).clone().requires_grad_()
        out = tiny_pipe.unet(sample, timestep, encoder_hidden_states=context).sample
        out.square().mean().backward()
        return out.detach(), context.grad

    guarded, grad = step()
    with method.disabled(tiny_pipe):
        plain, plain_grad = step()
    method.detach(tiny_pipe)
    assert grad is not None and grad.abs().sum() > 0
    assert torch.equal(guarded, plain) and torch.equal(grad, plain_grad)
