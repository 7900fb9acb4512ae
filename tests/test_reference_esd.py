"""ESD's paper mode against the authors' released diffusers script (esd_sd.py), run once by
bench/reference/esd/make_reference.py on the tiny pipeline: one iteration of esd-x and esd-u, its loss, gradients
and edited weights. veil takes the same DDIM index and starting noise and must reproduce them within 1e-5 relative.
Both run in float64, so the fixture holds on every CPU (in float32 the smallest gradients differ by ~3e-5 relative
between CPUs, whoever computes them).

The authors' ``negative_guidance`` counts the concept's own prediction once more than veil's ``eta``: their default 2
is veil's 1. Their script samples the trajectory with the frozen original, veil with the model being trained; the
two are the same model at the first iteration, which is the one compared.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import veil
from veil.methods.esd import ESD

FIXTURE = Path(__file__).resolve().parent.parent / "bench" / "reference" / "esd" / "fixture"
REFERENCE = json.loads((FIXTURE / "reference.json").read_text())
TENSORS = load_file(FIXTURE / "tensors.safetensors")
RTOL = 1e-5


def relative(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _one_iteration(tiny_pipe, record, monkeypatch):
    """veil's ESD in paper mode, one training step at the reference's DDIM index and starting noise."""
    method = ESD(concepts=[REFERENCE["concept"]], train_method=record["train_method"], mode="paper", max_train_steps=1,
                 learning_rate=record["lr"], negative_guidance=record["negative_guidance"] - 1,
                 start_guidance=record["guidance_scale"], ddim_steps=record["num_inference_steps"], samples_per_trajectory=1)
    make_batch = method.make_batch

    def at_the_reference_draw(pipe, generator):
        # The concept (one) and the DDIM index are the reference's; the trajectory's noise is the first draw of
        # a generator seeded as the authors' script seeds its own.
        with monkeypatch.context() as patch:
            patch.setattr(torch, "randint", lambda high, size, generator=None: torch.zeros(size, dtype=torch.long))
            patch.setattr(torch, "randperm", lambda n, generator=None: torch.tensor([record["t_enc"]]))
            return make_batch(pipe, torch.Generator().manual_seed(record["noise_seed"]))

    monkeypatch.setattr(method, "make_batch", at_the_reference_draw)
    assert REFERENCE["dtype"] == "float64"
    tiny_pipe.to(torch.float64)
    originals = {name: p.detach().clone() for name, p in tiny_pipe.unet.named_parameters()}
    # The loop may step each weight inside the backward pass and free its gradient: keep a copy as it lands.
    grads = {}
    handles = [p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.detach().clone()))
               for name, p in tiny_pipe.unet.named_parameters() if p.requires_grad or name in record["parameters"]]
    try:
        cost = veil.fit(method, tiny_pipe, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    return method, cost, originals, grads


@pytest.mark.parametrize("variant", sorted(REFERENCE["variants"]))
def test_paper_mode_reproduces_the_authors_first_iteration(tiny_pipe, variant, monkeypatch):
    record = REFERENCE["variants"][variant]
    method, cost, originals, grads = _one_iteration(tiny_pipe, record, monkeypatch)
    # The same parameters, by name: Linear and Conv2d layers only (esd-u with the time embedding and conv_out).
    edited = {name[len("unet."):]: tensor for name, tensor in method.state_dict().items()}
    assert sorted(edited) == record["parameters"]
    # The same sample: the latent after t_enc DDIM steps, at its own timestep.
    assert abs(cost["losses"][0]["main"] - record["loss"]) <= RTOL * record["loss"]
    for name in record["parameters"]:
        grad = grads[name]
        assert abs(float(grad.double().norm()) - record["grad_norms"][name]) <= RTOL * record["grad_norms"][name], name
        assert abs(float(edited[name].double().norm()) - record["edited_norms"][name]) <= RTOL * record["edited_norms"][name], name
    for name in record["whole_tensors"]:
        reference_grad, reference_edit = TENSORS[f"{variant}.grad.{name}"], TENSORS[f"{variant}.edited.{name}"]
        assert relative(grads[name], reference_grad) <= RTOL, name
        assert relative(edited[name], reference_edit) <= RTOL, name
        # The step itself, not only the weights it moved a little: edited minus original.
        assert relative(edited[name] - originals[name], reference_edit - originals[name]) <= RTOL, name
    method.detach(tiny_pipe)


def test_the_reference_trains_what_the_paper_sets_name():
    x, u = (set(REFERENCE["variants"][v]["parameters"]) for v in ("esd-x", "esd-u"))
    assert all("attn2" in n for n in x) and not x & u
    assert {"time_embedding.linear_1.weight", "time_embedding.linear_2.weight", "conv_out.weight"} <= u
    assert not any("norm" in n.split(".")[-2] for n in x | u)  # no norm layer
