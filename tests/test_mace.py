import numpy as np
import pytest
import torch

import veil
from veil.methods.mace import MACE, region_attention_loss
from veil.methods.weights import least_squares_projection
from veil.shapes.data import render, render_with_mask

from .conftest import render as generate, saved_and_reloaded

FAST = dict(images_per_concept=2, generation_steps=2, max_train_steps=3, learning_rate=1e-2, regularization=0.1)


def test_fusion_closed_form_matches_a_direct_least_squares_solve():
    g = torch.Generator().manual_seed(0)
    w0, x, p = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g), torch.randn(3, 5, generator=g)
    y = torch.randn(4, 6, generator=g)
    w0, x, p, y = (t.double() for t in (w0, x, p, y))
    s, lam, gamma = 2.0, 0.5, 0.1
    fused = least_squares_projection(w0, x, y, p, s, lam, gamma)
    # The same objective as one stacked least-squares problem in Wᵀ: rows √s x_i → √s y_i, √λ p_j → √λ W₀ p_j, √γ I → √γ W₀ᵀ.
    a = torch.cat([s**0.5 * x, lam**0.5 * p, gamma**0.5 * torch.eye(5, dtype=torch.float64)])
    b = torch.cat([s**0.5 * y, lam**0.5 * p @ w0.T, gamma**0.5 * w0.T])
    direct = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(fused, direct, rtol=1e-6, atol=1e-8)

    def objective(w):
        return s * ((x.double() @ w.T - y) ** 2).sum() + lam * ((p.double() @ (w - w0.double()).T) ** 2).sum() + gamma * ((w - w0.double()) ** 2).sum()

    for _ in range(3):  # any move away raises the objective
        assert objective(fused + 1e-3 * torch.randn(6, 5, generator=g).double()) > objective(fused)


def test_region_loss_counts_only_the_concepts_tokens_inside_the_region():
    g = torch.Generator().manual_seed(1)
    maps = [torch.softmax(torch.randn(1, 2, 16, 5, generator=g), -1), torch.softmax(torch.randn(1, 2, 4, 5, generator=g), -1)]
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1.0  # the top-left quarter
    loss = region_attention_loss(maps, [2, 3], mask)
    expected = 0.0
    for probs in maps:
        side = int(probs.shape[2] ** 0.5)
        m = torch.nn.functional.adaptive_avg_pool2d(mask[:, None], side).reshape(-1)
        expected += sum(float((probs[0, h, :, k] * m).pow(2).sum()) for h in range(2) for k in (2, 3)) / 2
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)
    assert region_attention_loss(maps, [2, 3], torch.zeros(1, 4, 4)).item() == 0.0
    outside = [m.clone() for m in maps]
    outside[0][0, :, 15] += 1.0  # bottom-right pixel: outside the region
    assert region_attention_loss(outside, [2, 3], mask).item() == pytest.approx(loss.item(), rel=1e-6)


def test_rendered_mask_matches_the_image_and_render_is_unchanged():
    image, alpha = render_with_mask("circle", "red", "plain", np.random.default_rng(3))
    assert np.array_equal(image, render("circle", "red", "plain", np.random.default_rng(3)))
    assert alpha.shape == (32, 32) and 0.0 <= alpha.min() and alpha.max() <= 1.0
    red = image[..., 0].astype(int) - image[..., 2].astype(int)
    assert red[alpha > 0.99].mean() > 100 > abs(red[alpha < 0.01].mean())


def test_mace_attach_detach_bit_exact_and_round_trip(tmp_path, tiny_pipe):
    original = generate(tiny_pipe)
    processors = dict(tiny_pipe.unet.attn_processors)
    method = MACE(concepts=["circle", "square"], **FAST)
    method.attach(tiny_pipe)
    assert torch.equal(generate(tiny_pipe), original)  # unfitted: identity
    method.detach(tiny_pipe)
    cost = veil.fit(method, tiny_pipe, progress=False)
    assert set(cost["lora_final_loss"]) == {"circle", "square"}
    assert tiny_pipe.unet.attn_processors == processors  # the training processors are gone
    edited = generate(tiny_pipe)
    assert not torch.equal(edited, original)
    artifact = saved_and_reloaded(method, tiny_pipe, tmp_path / "mace", original, edited)
    artifact.detach(tiny_pipe)
    # The UNet state dict export loads into a stock UNet and draws the same images.
    from safetensors.torch import load_file

    artifact.export_unet_state_dict(tmp_path / "mace.safetensors")
    exported = load_file(tmp_path / "mace.safetensors")
    assert sorted(exported) == sorted(n for n, _ in tiny_pipe.unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n)
    tiny_pipe.unet.load_state_dict(exported, strict=False)
    assert torch.equal(generate(tiny_pipe), edited)


def test_mace_refusals():
    with pytest.raises(veil.VeilError, match="renderer"):
        MACE(concepts=["a cathedral"], region="renderer")
    with pytest.raises(veil.VeilError, match="region"):
        MACE(concepts=["circle"], region="grounded-sam")
    with pytest.raises(veil.VeilError, match="exactly one"):
        MACE(concepts=["circle"], templates=["a photo"])
    with pytest.raises(veil.VeilError, match="rank"):
        MACE(concepts=["circle"], rank=0)
    with pytest.raises(veil.VeilError, match="region_threshold"):
        MACE(concepts=["circle"], region_threshold=1.5)
