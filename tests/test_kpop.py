"""KPOP: the keyed cross-attention, the alternating training, and the public/secret split."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file, save_file

import veil
from veil.methods.gate import GateSettings
from veil.methods.kpop.keys import Key, random_key_like
from veil.methods.base import Stage
from veil.methods.kpop import KPOP, KPOPConfig, KeyedCrossAttnProcessor, keyed_attention, select_key_sites
from veil.models import build_tiny_pipeline
from veil.training.sampling import encode_prompts

from .conftest import render

CONCEPT = "a red circle"
TRACE = 1e-8  # a start noise far below the tests' tolerances, where they check where decoys come from


@pytest.fixture(scope="module")
def trained():
    """One short KPOP run on the tiny model, shared by the tests that only read it."""
    pipe = build_tiny_pipeline(seed=0)
    pipe.veil_model_name = "tiny"
    base = render(pipe)
    method = KPOP(KPOPConfig.paper([CONCEPT], max_train_steps=60, learning_rate=1e-3, key_learning_rate=1e-2,
                                   layers="all", ddim_steps=10))
    steps = []
    loss = method.loss

    def recording_loss(pipe, batch, phase):
        value = loss(pipe, batch, phase)
        if phase == "key":
            steps.append(dict(method.last_losses))
        return value

    method.loss = recording_loss
    cost = veil.fit(method, pipe, progress=False)
    del method.loss
    return pipe, method, cost, steps, base


def _prediction_gaps(pipe, method, prompt, key):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(8, 4, 8, 8, generator=generator)
    timesteps = torch.randint(0, 1000, (8,), generator=generator)
    embeds = encode_prompts(pipe, [prompt]).expand(8, -1, -1)

    def predict():
        return pipe.unet(latents, timesteps, encoder_hidden_states=embeds).sample

    with torch.no_grad():
        with method.disabled(pipe):
            original = predict()
        public = predict()
        with method.unlocked(pipe, key):
            unlocked = predict()
        with method.unlocked(pipe, random_key_like(key, torch.Generator().manual_seed(5))):
            random = predict()
    gap = lambda x: (x - original).pow(2).mean().item()  # noqa: E731
    return gap(public), gap(unlocked), gap(random)


def test_config_presets_and_checks():
    paper = KPOPConfig(concepts=["circle"])
    assert (paper.max_train_steps, paper.learning_rate, paper.key_learning_rate) == (1000, 1e-5, 0.0)
    assert paper.key_start == "random"  # a secret random key that does not train: the public settings cannot rebuild it
    assert (paper.hide_weight, paper.recover_weight, paper.retain_weight, paper.loss_space) == (1.0, 0.1, 0.0, "eps")
    tuned = KPOPConfig.tuned(["circle"], ["square"], max_train_steps=5)
    assert tuned.retain_weight == 0.1 and tuned.max_train_steps == 5
    assert KPOPConfig.from_dict(tuned.to_dict()) == tuned
    for bad in (dict(layers="down"), dict(train_method="full"), dict(loss_space="v"), dict(num_key_tokens=0),
                dict(preset="tuned"), dict(synonyms={"square": ["box"]}), dict(retain_concepts=["circle"], retain_weight=0.1)):
        with pytest.raises(veil.VeilError):
            KPOPConfig(concepts=["circle"], **bad)


def test_layer_choices_select_cross_attention_sites(tiny_pipe):
    unet = tiny_pipe.unet
    mid, midout, every = (select_key_sites(unet, layers) for layers in ("mid", "midout", "all"))
    assert mid == ["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    assert set(mid) < set(midout) < set(every) and all(".attn2." in s for s in every)
    assert not any(s.startswith("down_blocks") for s in midout)


def test_without_a_key_or_with_an_empty_one_attention_is_stock_bit_for_bit(tiny_pipe):
    unet = tiny_pipe.unet
    before = dict(unet.attn_processors)
    base = render(tiny_pipe)
    sites = select_key_sites(unet, "all")
    empty = torch.zeros(0, 32)
    with keyed_attention(unet, sites, empty, empty):
        assert all(isinstance(unet.attn_processors[s], KeyedCrossAttnProcessor) for s in sites)
        assert torch.equal(render(tiny_pipe), base)
    with keyed_attention(unet, sites, None, None):  # a detached key delegates to the stock processor
        assert torch.equal(render(tiny_pipe), base)
    after = unet.attn_processors
    assert all(after[name] is processor for name, processor in before.items())  # the same objects are back


def test_keyed_processor_is_attention_over_the_extended_context(tiny_pipe):
    attn = tiny_pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn2
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 16, 64, generator=generator)
    context = torch.randn(2, 16, 32, generator=generator)
    prompt = torch.randn(3, 32, generator=generator)
    mask = torch.zeros(2, 1, 16)
    mask[:, :, 12:] = -10000.0  # the pipeline's additive mask over padding tokens
    extended = torch.cat([context, prompt.expand(2, -1, -1)], dim=1)
    with torch.no_grad():
        keyed = KeyedCrossAttnProcessor(AttnProcessor2_0(), prompt, prompt)(attn, hidden, context, mask)
        stock = AttnProcessor2_0()(attn, hidden, extended, torch.cat([mask, torch.zeros(2, 1, 3)], dim=-1))
        different = KeyedCrossAttnProcessor(AttnProcessor2_0(), prompt, 2 * prompt)(attn, hidden, context, mask)
    torch.testing.assert_close(keyed, stock, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(different, stock, atol=1e-4)  # P_v feeds the values, P_k only the keys

    # Training batches hiding (no key) and recovery (key) rows together: unkeyed rows see the text alone.
    rows = torch.tensor([False, True])
    with torch.no_grad():
        mixed = KeyedCrossAttnProcessor(AttnProcessor2_0(), prompt, prompt, rows)(attn, hidden, context, mask)
        plain = AttnProcessor2_0()(attn, hidden, context, mask)
    torch.testing.assert_close(mixed[0], plain[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1], stock[1], rtol=1e-5, atol=1e-6)


def test_attach_is_identity_and_detach_restores(tiny_pipe):
    base = render(tiny_pipe)
    processors = dict(tiny_pipe.unet.attn_processors)
    method = KPOP(concepts=["circle"], max_train_steps=2, learning_rate=1e-2, ddim_steps=4, samples_per_trajectory=2)
    method.attach(tiny_pipe)
    assert torch.equal(render(tiny_pipe), base)
    assert all(tiny_pipe.unet.attn_processors[n] is p for n, p in processors.items())  # nothing installed without a key
    veil.fit(method, tiny_pipe, progress=False)
    assert not torch.equal(render(tiny_pipe), base)
    with method.disabled(tiny_pipe):
        assert torch.equal(render(tiny_pipe), base)
    method.detach(tiny_pipe)
    assert torch.equal(render(tiny_pipe), base)
    assert all(tiny_pipe.unet.attn_processors[n] is p for n, p in processors.items())


def test_training_hides_the_concept_and_the_key_recovers_it(trained):
    pipe, method, cost, steps, _ = trained
    assert set(cost["losses"][0]) == {"unet", "key"}  # a UNet step, then a key step, every step
    mean = lambda name, part: sum(s[name] for s in part) / len(part)  # noqa: E731
    assert mean("hide", steps[-10:]) < 0.5 * mean("hide", steps[:10])
    assert mean("recover_key_step", steps[-10:]) < 0.5 * mean("recover_key_step", steps[:10])
    public, unlocked, random = _prediction_gaps(pipe, method, CONCEPT, method.key)
    assert unlocked < 0.3 * public, (public, unlocked)  # the key brings the original prediction back
    assert unlocked < 0.5 * random, (random, unlocked)  # a random key of the same norm does much less


def test_public_artifact_holds_no_key_and_round_trips(trained, tmp_path):
    pipe, method, cost, _, _ = trained
    assert all(name.startswith("unet.") for name in method.state_dict())
    artifact = veil.Artifact.from_method(method, pipe, {k: v for k, v in cost.items() if k != "losses"})
    assert artifact.manifest["key_fingerprint"] == method.key.fingerprints()
    artifact.save(tmp_path / "hidden")
    hidden, unlocked = render(pipe), None
    with method.unlocked(pipe):
        unlocked = render(pipe)
    veil.save_key(method.key, tmp_path / "circle.veilkey", artifact=artifact)

    fresh = build_tiny_pipeline(seed=0)
    loaded = veil.load_artifact(tmp_path / "hidden")
    restored = loaded.attach(fresh)
    assert torch.equal(render(fresh), hidden)
    key = veil.load_key_for(tmp_path / "circle.veilkey", loaded)
    with restored.unlocked(fresh, key):
        assert torch.equal(render(fresh), unlocked)
    loaded.detach(fresh)

    # Without veil: a stock pipeline takes the public weights as a partial UNet state dict.
    stock = build_tiny_pipeline(seed=0)
    weights = load_file(tmp_path / "hidden" / "model.safetensors")
    assert all(name.startswith("unet.") for name in weights)
    result = stock.unet.load_state_dict({k[len("unet."):]: v for k, v in weights.items()}, strict=False)
    assert not result.unexpected_keys
    assert torch.equal(render(stock), hidden)


def test_several_concepts_one_key_each_and_synonyms(tiny_pipe):
    method = KPOP(concepts=["circle", "square"], synonyms={"circle": ["disc", "round shape"]}, max_train_steps=2,
                  learning_rate=1e-3, ddim_steps=4, samples_per_trajectory=2, num_key_tokens=4)
    veil.fit(method, tiny_pipe, progress=False)
    key = method.key
    assert key.concepts == ["circle", "square"] and key["circle"][0].shape == (4, 32)
    fingerprints = key.fingerprints()
    assert fingerprints["circle"] != fingerprints["square"]

    embeds = [encode_prompts(tiny_pipe, ["circle", "disc", "round shape"]), encode_prompts(tiny_pipe, ["square"])]
    seen = set()
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        batch = method.make_batch(tiny_pipe, generator)
        phrasing = next(i for i, e in enumerate(embeds[batch["concept"]]) if torch.allclose(e, batch["cond"][0], atol=1e-5))
        seen.add((batch["concept"], phrasing))
    assert {c for c, _ in seen} == {0, 1} and len({p for c, p in seen if c == 0}) >= 2

    rows = method.bench_keys("circle")
    assert set(rows) == {"with_key", "wrong_key", "random_key"}
    assert torch.equal(rows["wrong_key"]["circle"][0], key["square"][0])
    with method.unlocked(tiny_pipe, key.subset(["square"])):
        render(tiny_pipe)
    with pytest.raises(veil.VeilError, match="does not hide"):
        with method.unlocked(tiny_pipe, Key({"triangle": key["circle"]})):
            pass


def test_x0_loss_space_and_the_retain_term(tiny_pipe):
    method = KPOP(KPOPConfig.tuned(["circle"], ["square", "triangle"], loss_space="x0", max_train_steps=2,
                                   learning_rate=1e-3, ddim_steps=4, samples_per_trajectory=2))
    cost = veil.fit(method, tiny_pipe, progress=False)
    assert cost["steps"] == 2 and set(method.last_losses) >= {"hide", "recover", "retain", "key_retain"}
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in cost["losses"])


def test_context_retain_concepts_share_the_steps_context(tiny_pipe):
    """On a step in a context the retain row is another concept in that context; on a bare step, a retain concept."""
    settings = dict(retain_concepts=["square"], retain_weight=1.0, key_retain_weight=0.0, context_retain_concepts=["triangle"],
                    contexts=["a red {} on a table"], ddim_steps=4, samples_per_trajectory=2, max_train_steps=1)
    for probability, expected in ((1.0, "a red triangle on a table"), (0.0, "square")):
        method = KPOP(concepts=["circle"], context_probability=probability, **settings)
        method.attach(tiny_pipe)
        batch = method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))
        torch.testing.assert_close(batch["retain_cond"][:1], encode_prompts(tiny_pipe, [expected]), atol=1e-5, rtol=1e-5)
        with torch.no_grad(), method.disabled(tiny_pipe):
            original = tiny_pipe.unet(batch["latents"], batch["timesteps"], encoder_hidden_states=batch["retain_cond"]).sample
        torch.testing.assert_close(batch["retain_target"], original, atol=1e-4, rtol=1e-4)
        method.detach(tiny_pipe)
    with pytest.raises(veil.VeilError, match="both hidden and retained"):
        KPOP(concepts=["circle"], context_retain_concepts=["circle"])


def test_the_hiding_target_is_anchored_at_the_context_with_the_guide_in_the_concepts_place(tiny_pipe):
    """context_guide puts another concept where the hidden one was: the hiding target steers from the concept's
    caption towards that caption, not towards the caption with a hole (which a model may still draw as the concept)."""
    from veil.training.sampling import negative_guidance_target

    settings = dict(contexts=["a red {} on a table"], context_probability=1.0, ddim_steps=4, samples_per_trajectory=2,
                    max_train_steps=1, retain_weight=0.0, key_retain_weight=0.0, decoy_weight=0.0)
    for guide, anchor in (("square", "a red square on a table"), ("", "a red on a table")):
        method = KPOP(concepts=["circle"], context_guide=guide, **settings)
        method.attach(tiny_pipe)
        try:
            batch = method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))
            with torch.no_grad(), method.disabled(tiny_pipe):
                states = encode_prompts(tiny_pipe, [anchor, "a red circle on a table"]).repeat_interleave(2, dim=0)
                preds = tiny_pipe.unet(batch["latents"].repeat(2, 1, 1, 1), batch["timesteps"].repeat(2),
                                       encoder_hidden_states=states).sample.chunk(2)
        finally:
            method.detach(tiny_pipe)
        torch.testing.assert_close(batch["target_hide"], negative_guidance_target(preds[0], preds[1], 1.0),
                                   atol=1e-4, rtol=1e-4)


def test_trajectory_pool_hands_back_every_prompt_of_a_request_at_the_same_steps(tiny_pipe):
    from veil.training.sampling import TrajectoryPool, sample_partial_trajectories

    conds = encode_prompts(tiny_pipe, ["a red circle", "a blue square", "a green star"])
    uncond = encode_prompts(tiny_pipe, [""])
    requests = iter([(conds[:2], [0, 2], {"n": 2}), (conds[2:], [1], {"n": 1})])
    pool = TrajectoryPool(2)
    got = [pool.next(tiny_pipe, lambda g: next(requests), uncond, num_inference_steps=4, guidance_scale=3.0,
                     generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    alone = sample_partial_trajectories(tiny_pipe, conds, uncond, [[0, 2], [0, 2], [1]], num_inference_steps=4,
                                        guidance_scale=3.0, generator=torch.Generator().manual_seed(3))
    assert [info["n"] for *_, info in got] == [2, 1]
    torch.testing.assert_close(got[0][0], torch.cat(alone[:2]))
    torch.testing.assert_close(got[1][0], alone[2])


def test_decoy_keys_are_random_or_another_words_states(tiny_pipe):
    """Decoys hide the concept under a key of the real key's norms: random directions, or (word_decoy_probability)
    the first tokens of another concept's text states, as a real key starts."""
    settings = dict(retain_concepts=["square"], context_retain_concepts=["triangle"], retain_weight=1.0, key_retain_weight=0.0,
                    decoy_weight=1.0, num_key_tokens=3, ddim_steps=4, samples_per_trajectory=2, max_train_steps=1,
                    key_init_noise=TRACE)
    words = {w: encode_prompts(tiny_pipe, [w])[0, :3] for w in ("square", "triangle")}
    drawn = set()
    for seed in range(6):
        method = KPOP(concepts=["circle"], word_decoy_probability=1.0, **settings)
        method.attach(tiny_pipe)
        batch = method.make_batch(tiny_pipe, torch.Generator().manual_seed(seed))
        match = [w for w, states in words.items() if torch.allclose(batch["decoy"][0], states, atol=1e-5)]
        assert len(match) == 1 and torch.equal(batch["decoy"][0], batch["decoy"][1])
        drawn.add(match[0])
        method.optimizer_groups()  # creates the key
        method.loss(tiny_pipe, batch, "unet").backward()
        assert method.last_losses["decoy"] >= 0
        method.after_step("unet")
        method.detach(tiny_pipe)
    assert drawn == {"square", "triangle"}  # both lists supply words
    method = KPOP(concepts=["circle"], word_decoy_probability=1.0, decoy_words=["star"], **settings)
    method.attach(tiny_pipe)
    star = encode_prompts(tiny_pipe, ["star"])[0, :3]
    for seed in range(3):  # decoy_words, when named, are the only source
        assert torch.allclose(method.make_batch(tiny_pipe, torch.Generator().manual_seed(seed))["decoy"][0], star, atol=1e-5)
    method.detach(tiny_pipe)
    method = KPOP(concepts=["circle"], **settings)  # default: random directions only
    method.attach(tiny_pipe)
    decoy = method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))["decoy"]
    assert not any(torch.allclose(decoy[0], states, atol=1e-3) for states in words.values()) and not torch.equal(decoy[0], decoy[1])
    method.detach(tiny_pipe)
    with pytest.raises(veil.VeilError, match="word_decoy_probability"):
        KPOP(concepts=["circle"], word_decoy_probability=0.5)
    with pytest.raises(veil.VeilError, match="both hidden and a decoy word"):
        KPOP(concepts=["circle"], decoy_words=["circle"])


def test_key_starts_apart_from_the_concepts_states_by_secret_noise(tiny_pipe):
    """Each token of the start is E(c)[:m] moved by a random direction of key_init_noise times its norm, drawn anew each
    time (not from the recorded seed), and word decoys get the same; key_init_noise 0 (a start anyone can rebuild) is
    refused when training starts, but an artifact saved with it still loads."""
    start = encode_prompts(tiny_pipe, ["circle"])[0, :3].float()
    settings = dict(retain_concepts=["square"], retain_weight=1.0, key_retain_weight=0.0, decoy_weight=1.0, num_key_tokens=3,
                    ddim_steps=4, samples_per_trajectory=2, max_train_steps=1, key_start="concept")
    keys = []
    for noise in (0.5, 0.5, 1.0):
        method = KPOP(concepts=["circle"], key_init_noise=noise, word_decoy_probability=1.0, **settings)
        method.attach(tiny_pipe)
        method.optimizer_groups()
        key_tokens, value_tokens = method.key["circle"]
        torch.testing.assert_close(key_tokens, value_tokens)
        shift = (key_tokens - start).norm(dim=-1) / start.norm(dim=-1)
        torch.testing.assert_close(shift, torch.full_like(shift, noise), atol=1e-4, rtol=1e-4)
        decoy = method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))["decoy"][0].cpu()
        square = encode_prompts(tiny_pipe, ["square"])[0, :3].float()
        assert not torch.allclose(decoy, square, atol=1e-3)
        keys.append(key_tokens)
        method.detach(tiny_pipe)
    assert not torch.allclose(keys[0], keys[1])  # same seed, another secret start
    assert KPOPConfig(concepts=["circle"]).key_init_noise == 1.0 and KPOPConfig.paper(["circle"]).key_init_noise == 1.0
    paper_start = KPOP(concepts=["circle"], key_init_noise=0.0, **settings)
    paper_start.attach(tiny_pipe)
    with pytest.raises(veil.VeilError, match="key_init_noise is 0"):
        paper_start.optimizer_groups()
    paper_start.detach(tiny_pipe)
    with pytest.raises(veil.VeilError, match="key_init_noise"):
        KPOP(concepts=["circle"], key_init_noise=-1.0)


def test_a_random_key_start_holds_nothing_public_and_a_zero_key_rate_keeps_it(tiny_pipe):
    """key_start random: P_k and P_v are independent random directions of E(c)[:m]'s norm, drawn anew each time; with
    key_learning_rate 0 only the UNet trains and the key leaves training as it started; a key finish is refused then."""
    start = encode_prompts(tiny_pipe, ["circle"])[0, :3].float()
    settings = dict(concepts=["circle"], key_start="random", key_learning_rate=0.0, decoy_weight=1.0, num_key_tokens=3,
                    ddim_steps=4, samples_per_trajectory=2, max_train_steps=2, learning_rate=1e-3)
    keys = []
    for _ in range(2):
        method = KPOP(**settings)
        method.attach(tiny_pipe)
        assert list(method.optimizer_groups()) == ["unet"] and len(method.optimizer_groups()["unet"]) == 1
        before = method.key
        weights = {k: v.clone() for k, v in method.state_dict().items()}
        method.detach(tiny_pipe)
        veil.fit(method, tiny_pipe, progress=False)
        assert before.fingerprints() == method.key.fingerprints()  # the key did not train
        assert any(not torch.equal(weights[k], v) for k, v in method.state_dict().items())  # the UNet did
        key_tokens, value_tokens = method.key["circle"]
        for tensor in (key_tokens, value_tokens):
            torch.testing.assert_close(tensor.norm(), start.norm())
            # A random direction in 3 x 32 dimensions: |cos| with any fixed vector has sd 0.1, so 0.5 fails about once
            # in a million draws, while E(c)[:m] plus noise of its own norm (key_start concept) sits near 0.7.
            assert abs(torch.nn.functional.cosine_similarity(tensor.flatten(), start.flatten(), dim=0)) < 0.5
        assert not torch.allclose(key_tokens, value_tokens)
        keys.append(key_tokens)
        method.detach(tiny_pipe)
    assert not torch.allclose(keys[0], keys[1])
    with pytest.raises(veil.VeilError, match="key_finish_steps"):
        KPOP(concepts=["circle"], key_learning_rate=0.0, key_finish_steps=5)
    with pytest.raises(veil.VeilError, match="key_start"):
        KPOP(concepts=["circle"], key_start="word")


@pytest.fixture
def fixed_secret(monkeypatch):
    """Key starts drawn from a fixed seed instead of the OS, for tests that compare two runs."""
    import veil.methods.kpop.method as kpop_method

    monkeypatch.setattr(kpop_method, "secret_generator", lambda: torch.Generator().manual_seed(7))


DECOY_SETTINGS = dict(retain_concepts=["square"], retain_weight=1.0, key_retain_weight=0.0, decoy_weight=1.0, num_key_tokens=3,
                      ddim_steps=4, samples_per_trajectory=2, max_train_steps=1, key_init_noise=TRACE)


def test_joint_key_update_is_one_step_whose_key_gradient_is_the_recovery_terms(tiny_pipe):
    """key_update joint: one optimizer (UNet lr, key lr); the key's gradient is recover_weight times the gradient the
    alternating key step takes from L_recover on the same batch and UNet, and the UNet's is the alternating UNet step's."""
    settings = dict(concepts=["circle"], retain_concepts=["square"], retain_weight=1.0, key_retain_weight=0.0, decoy_weight=1.0,
                    recover_weight=0.5, learning_rate=1e-3, key_learning_rate=1e-2, layers="all", ddim_steps=4,
                    samples_per_trajectory=2, max_train_steps=1)
    grads = {}
    for mode in ("alternate", "joint"):
        method = KPOP(key_update=mode, **settings)
        method.attach(tiny_pipe)
        groups = method.optimizer_groups()
        if mode == "joint":
            assert list(groups) == ["unet"] and [g["lr"] for g in groups["unet"]] == [1e-3, 1e-2]
        else:
            assert list(groups) == ["unet", "key"]
        with torch.no_grad():  # the same key in both modes
            method.key_prompts.key_tokens[0].fill_(0.1)
            method.key_prompts.value_tokens[0].fill_(-0.1)
        batch = method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))
        key, unet_params = method.key_prompts.key_tokens[0], method.edit.parameters()
        for phase in groups:
            for p in [key, *unet_params]:
                p.grad = None
            method.loss(tiny_pipe, batch, phase).backward()
            method.after_step(phase)
            grads[mode, phase] = (None if key.grad is None else key.grad.clone(), unet_params[0].grad.clone()
                                  if unet_params[0].grad is not None else None)
        method.detach(tiny_pipe)
    assert grads["alternate", "unet"][0] is None  # the alternating UNet step holds the key fixed
    assert grads["joint", "unet"][0].abs().sum() > 0
    torch.testing.assert_close(grads["joint", "unet"][0], 0.5 * grads["alternate", "key"][0], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grads["joint", "unet"][1], grads["alternate", "unet"][1], atol=1e-6, rtol=1e-4)
    short = KPOP(key_update="joint", **{**settings, "max_train_steps": 2})
    cost = veil.fit(short, tiny_pipe, progress=False)
    assert [set(step) for step in cost["losses"]] == [{"unet"}, {"unet"}]
    with pytest.raises(veil.VeilError, match="key_update"):
        KPOP(key_update="together", **settings)


def test_prefetched_prompt_states_are_those_encoded_one_at_a_time(tiny_pipe, monkeypatch):
    """A long run encodes every prompt a step can draw in batches first, with the states single encodes give."""
    from veil.training import sampling
    from veil.training.sampling import PromptCache

    prompts = ["a red circle", "a circle on a dotted background", "", "square"]
    cache = PromptCache()
    cache.prefetch(tiny_pipe, prompts, batch_size=3)
    for text in prompts:
        torch.testing.assert_close(cache(tiny_pipe, text), encode_prompts(tiny_pipe, [text]), rtol=1e-5, atol=1e-6)
    method = KPOP(concepts=["circle"], contexts=["a red {}", "a {} on a dotted background"], context_probability=1.0,
                  retain_concepts=["square"], context_retain_concepts=["square"], retain_weight=1.0, key_retain_weight=0.0,
                  ddim_steps=4, samples_per_trajectory=2, max_train_steps=10)
    method.attach(tiny_pipe)
    encoded, encode = [], sampling.encode_prompts
    monkeypatch.setattr(sampling, "encode_prompts", lambda pipe, texts: encoded.append(list(texts)) or encode(pipe, texts))
    method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))
    method.make_batch(tiny_pipe, torch.Generator().manual_seed(1))
    # One batch first, with every prompt a step can draw; no step encodes anything after it.
    assert len(encoded) == 1 and {"circle", "a red circle", "a circle on a dotted background", "a red", "a red square",
                                  "square", ""} <= set(encoded[0])
    method.detach(tiny_pipe)


def test_checkpoint_state_keeps_the_key_apart(trained):
    _, method, _, _, _ = trained
    state = method.checkpoint_state_dict()
    assert {k for k in state if k.startswith("key.")} == {"key.P_k.0", "key.P_v.0"}
    clone = KPOP(method.config)
    clone.load_state_dict(state)
    assert clone.key.fingerprints() == method.key.fingerprints()
    assert set(clone.state_dict()) == set(method.state_dict())


def test_gradient_checkpointing_keeps_the_key_gradient(tiny_pipe):
    method = KPOP(concepts=["circle"], layers="all", max_train_steps=1, ddim_steps=4, samples_per_trajectory=2)
    method.attach(tiny_pipe)
    method.optimizer_groups()  # creates the key
    batch = method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            tiny_pipe.unet.enable_gradient_checkpointing()  # diffusers' default is non-reentrant
        tiny_pipe.unet.train(checkpointing)
        method.key_prompts.zero_grad(set_to_none=True)
        method.loss(tiny_pipe, batch, "key").backward()
        method.after_step("key")
        grads.append(method.key_prompts.key_tokens[0].grad.clone())
    tiny_pipe.unet.disable_gradient_checkpointing()
    tiny_pipe.unet.eval()
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])
    assert not any(isinstance(p, KeyedCrossAttnProcessor) for p in tiny_pipe.unet.attn_processors.values())


@pytest.mark.parametrize("key_update", ["alternate", "joint"])
def test_resume_restores_the_key_or_refuses(tmp_path, key_update, fixed_secret):
    settings = dict(concepts=["circle"], max_train_steps=4, learning_rate=1e-3, ddim_steps=4, samples_per_trajectory=2,
                    key_update=key_update)
    whole = KPOP(**settings)
    veil.fit(whole, build_tiny_pipeline(seed=0), progress=False)

    pipe = build_tiny_pipeline(seed=0)
    veil.fit(KPOP(**settings), pipe, work_dir=tmp_path, checkpoint_every=2, stop_after=2, progress=False)
    path = tmp_path / "checkpoints" / "step-000002" / "method.safetensors"
    checkpoint = load_file(path)
    assert any(name.startswith("key.") for name in checkpoint)  # checkpoint_state_dict: the key too
    resumed = KPOP(**settings)
    veil.fit(resumed, build_tiny_pipeline(seed=0), work_dir=tmp_path, resume=True, progress=False)
    assert resumed.key.fingerprints() == whole.key.fingerprints()
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor)

    # A checkpoint without the key: resuming would pair a fresh key with a half-trained UNet, so it is refused.
    save_file({k: v for k, v in checkpoint.items() if not k.startswith("key.")}, path)
    with pytest.raises(veil.VeilError, match="cannot resume"):
        veil.fit(KPOP(**settings), build_tiny_pipeline(seed=0), work_dir=tmp_path, resume=True, progress=False)


def test_bench_wrong_key_row_uses_the_key_trained_for_another_concept(tmp_path, monkeypatch):
    from veil import bench

    pipe = build_tiny_pipeline(seed=0)
    pipe.veil_model_name = "tiny"
    trained_keys, seen = {}, []
    for concept in ("circle", "square"):
        method = KPOP(KPOPConfig.paper([concept], max_train_steps=1, layers="all", ddim_steps=4))
        veil.fit(method, pipe, progress=False)
        folder = tmp_path / concept
        veil.Artifact.from_method(method, pipe).save(folder)
        method.detach(pipe)
        trained_keys[concept] = (str(folder), method.key, {"method": "kpop", "concept": concept})

    def evaluate(pipe, rows, classify, settings):
        # Record which key the keyed sites hold while the rows are drawn.
        keyed = [p for p in pipe.unet.attn_processors.values() if isinstance(p, KeyedCrossAttnProcessor)]
        seen.append((rows[0]["shape"], keyed[0].key[0].clone()))
        return {"rates": {rows[0]["shape"]: 0.25}}

    monkeypatch.setattr(bench, "_evaluate", evaluate)
    rows = [{"prompt": f"a {s}", "seed": 0, "shape": s, "colour": None, "background": None} for s in ("circle", "square")]
    bench._other_concept_key_rows(trained_keys, pipe, rows, None, {}, log=lambda m: None)
    assert trained_keys["circle"][2]["wrong_key_from"] == "square" and trained_keys["square"][2]["wrong_key_from"] == "circle"
    assert trained_keys["circle"][2]["target_rate_wrong_key"] == 0.25
    (shape, used), = [s for s in seen if s[0] == "circle"]
    torch.testing.assert_close(used, trained_keys["square"][1]["square"][0].to(used.dtype))
    assert not any(isinstance(p, KeyedCrossAttnProcessor) for p in pipe.unet.attn_processors.values())  # detached again



def test_key_finish_moves_the_key_alone_on_the_saved_unet_and_resumes(tmp_path, fixed_secret):
    """key_finish_steps: a second stage of key-only steps on L_recover; the public UNet is the main stage's, bit for bit,
    the key ends nearer the original on the concept, and a resumed run finds both stages' results."""
    settings = dict(concepts=["circle"], max_train_steps=3, learning_rate=1e-3, key_learning_rate=2e-2, layers="all",
                    ddim_steps=4, samples_per_trajectory=2, key_update="joint")
    plain, finished = KPOP(**settings), KPOP(key_finish_steps=12, **settings)
    assert plain.stages() == [Stage("main", 3)] and finished.stages() == [Stage("main", 3), Stage("key_finish", 12)]
    plain_pipe, pipe = build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=0)
    veil.fit(plain, plain_pipe, progress=False)
    cost = veil.fit(finished, pipe, work_dir=tmp_path, progress=False)
    assert cost["stages"] == {"main": {"steps": 3, "seconds": cost["stages"]["main"]["seconds"]},
                              "key_finish": {"steps": 12, "seconds": cost["stages"]["key_finish"]["seconds"]}}
    assert all(set(step) == {"key"} for step in cost["losses"][3:])
    for name, tensor in plain.state_dict().items():  # the public part is untouched by the finish
        torch.testing.assert_close(finished.state_dict()[name], tensor, rtol=0, atol=0)
    assert finished.key.fingerprints() != plain.key.fingerprints()
    _, plain_gap, _ = _prediction_gaps(plain_pipe, plain, "circle", plain.key)
    _, finished_gap, _ = _prediction_gaps(pipe, finished, "circle", finished.key)
    assert finished_gap < 0.8 * plain_gap  # the finished key brings the original's prediction back closer
    assert "key.P_k.0" in load_file(tmp_path / "main" / "done.safetensors")  # the next stage starts from the trained key
    resumed = KPOP(key_finish_steps=12, **settings)
    veil.fit(resumed, build_tiny_pipeline(seed=0), work_dir=tmp_path, resume=True, progress=False)
    assert resumed.key.fingerprints() == finished.key.fingerprints()
    with pytest.raises(veil.VeilError, match="key_finish_steps"):
        KPOP(key_finish_steps=-1, **settings)
    with pytest.raises(veil.VeilError, match="no stage"):
        finished.set_stage("tlmo")


# The tiny model's random text encoder puts two short prompts at a flattened cosine of up to 0.95, so these tests
# route on a stricter gate than the shapes world's defaults: only prompts naming a phrasing word for word (gate 1).
STRICT_GATE = GateSettings(gate_threshold=0.99, skip_on="gate")


def test_routed_key_unlocks_prompts_about_the_concept_and_leaves_every_other_prompt_public(trained):
    """routed=True: the concept's prompt is drawn as with the key attached, bit for bit; another prompt as the public
    model draws it, bit for bit, where the unrouted key changes it; in one batch each prompt is routed on its own."""
    pipe, method, _, _, _ = trained
    other = "a blue square"
    for prompt in (CONCEPT, other, [CONCEPT, other]):
        public = render(pipe, prompt)
        with method.unlocked(pipe):
            unrouted = render(pipe, prompt)
        with method.unlocked(pipe, routed=True, gate=STRICT_GATE):
            routed = render(pipe, prompt)
        assert not torch.equal(unrouted[-1], public[-1])
        if isinstance(prompt, str):
            assert torch.equal(routed, unrouted if prompt == CONCEPT else public), prompt
        else:  # one batch: the key is masked out of the other prompt's attention
            torch.testing.assert_close(routed[0], unrouted[0], atol=1e-4, rtol=0)
            torch.testing.assert_close(routed[1], public[1], atol=1e-4, rtol=0)
    assert not any(isinstance(p, KeyedCrossAttnProcessor) for p in pipe.unet.attn_processors.values())
    hooks = pipe.unet._forward_pre_hooks, pipe.text_encoder._forward_hooks
    assert not any(hooks)  # nothing left behind


def test_routed_key_follows_the_concepts_synonyms(tiny_pipe):
    method = KPOP(concepts=["circle"], synonyms={"circle": ["disc"]}, layers="all", max_train_steps=1, ddim_steps=4,
                  samples_per_trajectory=2)
    veil.fit(method, tiny_pipe, progress=False)
    for prompt, about in (("a red disc", True), ("circle", True), ("a square", False)):
        public = render(tiny_pipe, prompt)
        with method.unlocked(tiny_pipe):
            unrouted = render(tiny_pipe, prompt)
        with method.unlocked(tiny_pipe, routed=True, gate=STRICT_GATE):
            routed = render(tiny_pipe, prompt)
        assert torch.equal(routed, unrouted if about else public), prompt
