import pytest
import torch

import veil
import veil.training.sampling as sampling
from veil.methods.esd import ESD
from veil.methods.weights import select_unet_parameters
from veil.training.sampling import (
    TrajectoryPool,
    encode_prompts,
    sample_partial_trajectories,
    sample_partial_trajectory,
    trajectory_timesteps,
)


def test_variants_select_the_published_parameter_sets(tiny_pipe):
    unet = tiny_pipe.unet
    xattn = select_unet_parameters(unet, "xattn")
    noxattn = select_unet_parameters(unet, "noxattn")
    assert xattn and all("attn2" in n for n in xattn)
    assert all("attn1" in n for n in select_unet_parameters(unet, "selfattn"))
    assert not set(xattn) & set(noxattn)
    assert not any(n.startswith(("time_embedding", "conv_out")) for n in noxattn)
    assert len(select_unet_parameters(unet, "full")) == len(list(unet.parameters()))
    kv = select_unet_parameters(unet, "xattn_kv")
    assert set(kv) < set(xattn) and all(n.split(".attn2.")[1].split(".")[0] in ("to_k", "to_v") for n in kv)
    assert {n.split(".attn2.")[1].split(".")[0] for n in xattn} - {"to_k", "to_v"}  # to_q and to_out are left out
    with pytest.raises(veil.VeilError):
        ESD(concepts=["circle"], train_method="everything")
    with pytest.raises(veil.VeilError, match="mode"):
        ESD(concepts=["circle"], mode="authors")


def test_paper_mode_trains_the_authors_linear_and_conv_layers(tiny_pipe):
    unet = tiny_pipe.unet
    norms = {f"{m}.{n}" for m, module in unet.named_modules()
             if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) for n, _ in module.named_parameters(recurse=False)}
    paper = {v: set(select_unet_parameters(unet, v, "paper")) for v in ("xattn", "noxattn", "full", "selfattn", "xattn_kv")}
    veil_sets = {v: set(select_unet_parameters(unet, v, "veil")) for v in paper}
    assert norms and not any(paper[v] & norms for v in paper)  # no norm layer in any paper set
    assert paper["full"] == set(dict(unet.named_parameters())) - norms
    assert {"time_embedding.linear_1.weight", "time_embedding.linear_2.bias", "conv_out.weight", "conv_in.weight"} <= paper["noxattn"]
    assert paper["noxattn"] == paper["full"] - paper["xattn"]
    assert veil_sets["noxattn"] - paper["noxattn"] <= norms and paper["noxattn"] - veil_sets["noxattn"]
    for variant in ("xattn", "xattn_kv", "selfattn"):  # attention layers hold no norm: both modes agree
        assert paper[variant] == veil_sets[variant]
    paper_esd, veil_esd = (ESD(concepts=["circle"], train_method="noxattn", mode=m) for m in ("paper", "veil"))
    assert ESD(concepts=["circle"]).config.mode == "paper"
    assert set(paper_esd.edited_parameter_names(unet)) == paper["noxattn"]
    assert set(veil_esd.edited_parameter_names(unet)) == veil_sets["noxattn"]


def _pndm_pipe(pipe):
    from diffusers import PNDMScheduler

    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    return pipe


def test_trajectories_run_ddim_whatever_scheduler_the_pipeline_ships(tiny_pipe):
    from veil.models import build_tiny_pipeline

    cond, uncond = encode_prompts(tiny_pipe, ["circle"]), encode_prompts(tiny_pipe, [""])
    ddim = sample_partial_trajectory(tiny_pipe, cond, uncond, [1, 3], num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    pndm_pipe = _pndm_pipe(build_tiny_pipeline(seed=0))
    pndm = sample_partial_trajectory(pndm_pipe, cond, uncond, [1, 3], num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pndm, ddim, rtol=0, atol=0)
    assert type(pndm_pipe.scheduler).__name__ == "PNDMScheduler"  # the pipeline's own scheduler is left alone
    assert trajectory_timesteps(pndm_pipe, [0, 1, 3], 10).tolist() == trajectory_timesteps(tiny_pipe, [0, 1, 3], 10).tolist()
    # The pipeline's PNDM steps would have led elsewhere.
    scheduler = pndm_pipe.scheduler
    scheduler.set_timesteps(10)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for timestep in scheduler.timesteps[:3]:
            noise = sampling.guided_noise_pred(pndm_pipe.unet, latents, timestep, cond, uncond, 3.0)
            latents = scheduler.step(noise, timestep, latents).prev_sample
    assert (latents - pndm[1:]).abs().max() > 1e-3


def test_each_latent_is_trained_at_its_own_noise_level(tiny_pipe):
    from diffusers import DDIMScheduler

    levels = trajectory_timesteps(tiny_pipe, range(50), 50)
    assert levels[:3].tolist() == [981, 961, 941] and levels[-1] == 1  # SD's schedule: offset 1, 20 apart
    # One DDIM step more from the latent at index i, at its paired timestep, is the latent at index i + 1.
    cond, uncond = encode_prompts(tiny_pipe, ["circle"]), encode_prompts(tiny_pipe, [""])
    kept = sample_partial_trajectory(tiny_pipe, cond, uncond, [0, 3, 4], num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    timesteps = trajectory_timesteps(tiny_pipe, [0, 3], 10)
    scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    scheduler.set_timesteps(10)
    with torch.no_grad():
        noise = sampling.guided_noise_pred(tiny_pipe.unet, kept[1:2], timesteps[1], cond, uncond, 3.0)
    torch.testing.assert_close(scheduler.step(noise, timesteps[1], kept[1:2]).prev_sample, kept[2:3])
    assert timesteps[0] == 901 and timesteps[1] == 601  # pure noise at the top of the schedule
    # Trailing spacing with an uneven stride: the level is where DDIM's step lands, not the next listed timestep.
    tiny_pipe.scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config, timestep_spacing="trailing")
    assert trajectory_timesteps(tiny_pipe, [0, 1, 2], 30).tolist() == [999, 966, 933]
    tiny_pipe.scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config, timestep_spacing="leading")
    # ESD trains every latent at its level.
    method = ESD(concepts=["circle"], ddim_steps=5, samples_per_trajectory=5)
    method.attach(tiny_pipe)
    batch = method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))
    assert sorted(batch["timesteps"].tolist()) == sorted(trajectory_timesteps(tiny_pipe, range(5), 5).tolist())
    method.detach(tiny_pipe)


def test_one_trajectory_serves_several_t_enc(tiny_pipe):
    cond = encode_prompts(tiny_pipe, ["circle"])
    uncond = encode_prompts(tiny_pipe, [""])
    together = sample_partial_trajectory(tiny_pipe, cond, uncond, [7, 2, 4], num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    for row, t_enc in zip(together, [7, 2, 4]):
        alone = sample_partial_trajectory(tiny_pipe, cond, uncond, [t_enc], num_inference_steps=10, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(row, alone[0])


def test_batched_trajectories_are_the_single_ones(tiny_pipe):
    conds = encode_prompts(tiny_pipe, ["circle", "square", "a red circle"])
    uncond = encode_prompts(tiny_pipe, [""])
    t_encs = [[7, 2], [0], [9, 3, 5]]
    batched = sample_partial_trajectories(tiny_pipe, conds, uncond, t_encs, num_inference_steps=10,
                                          generator=torch.Generator().manual_seed(0))
    for i, (row, indices) in enumerate(zip(batched, t_encs)):
        generator = torch.Generator().manual_seed(0)
        for _ in range(i):  # trajectory i starts from the generator's i-th noise
            torch.randn(1, 4, 8, 8, generator=generator)
        alone = sample_partial_trajectory(tiny_pipe, conds[i : i + 1], uncond, indices, num_inference_steps=10, generator=generator)
        assert row.shape == (len(indices), 4, 8, 8)
        torch.testing.assert_close(row, alone, rtol=1e-4, atol=1e-5)


def test_trajectory_pool_samples_once_per_batch_and_hands_out_in_order(tiny_pipe, monkeypatch):
    import veil.training.sampling as sampling

    conds = encode_prompts(tiny_pipe, ["circle", "square"])
    uncond = encode_prompts(tiny_pipe, [""])
    runs = []
    real = sampling.sample_partial_trajectories
    monkeypatch.setattr(sampling, "sample_partial_trajectories", lambda *a, **k: runs.append(a[1].shape[0]) or real(*a, **k))
    counter = iter(range(100))

    def draw(generator):
        n = next(counter)
        return conds[n % 2 : n % 2 + 1], [n % 5 + 1], {"n": n}

    pool = TrajectoryPool(3)
    settings = {"num_inference_steps": 10, "guidance_scale": 3.0, "generator": torch.Generator().manual_seed(0)}
    handed = [pool.next(tiny_pipe, draw, uncond, **settings) for _ in range(4)]
    assert runs == [3, 3]  # one batched run per three steps
    assert [info["n"] for _, _, _, info in handed] == [0, 1, 2, 3]
    assert all(torch.equal(cond, conds[info["n"] % 2 : info["n"] % 2 + 1]) for _, cond, _, info in handed)
    assert [latents.shape[0] for latents, _, _, _ in handed] == [1, 1, 1, 1]
    with pytest.raises(veil.VeilError, match="trajectory batch"):
        ESD(concepts=["circle"], trajectory_batch=0)


def _noise_shift(pipe, method, prompt, latents, timesteps):
    embeds = encode_prompts(pipe, [prompt]).expand(latents.shape[0], -1, -1)
    with torch.no_grad():
        after = pipe.unet(latents, timesteps, encoder_hidden_states=embeds).sample
        with method.disabled(pipe):
            before = pipe.unet(latents, timesteps, encoder_hidden_states=embeds).sample
    return (after - before).pow(2).mean().item()


def test_esd_moves_the_concept_towards_the_negative_guidance_target(tiny_pipe):
    method = ESD(concepts=["a red circle"], max_train_steps=60, learning_rate=1e-3, ddim_steps=10, samples_per_trajectory=4)
    cost = veil.fit(method, tiny_pipe, progress=False)
    losses = [step["main"] for step in cost["losses"]]
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.5 * first, (first, last)

    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(8, 4, 8, 8, generator=generator)
    timesteps = torch.randint(0, 1000, (8,), generator=generator)
    concept = _noise_shift(tiny_pipe, method, "a red circle", latents, timesteps)
    unrelated = _noise_shift(tiny_pipe, method, "the quick brown fox jumps over the lazy dog", latents, timesteps)
    assert concept > 2 * unrelated, (concept, unrelated)


@pytest.mark.parametrize("method_name", ["esd", "kpop", "dumo"])
def test_contexts_anchor_the_target_at_the_context_without_the_concept(tiny_pipe, method_name):
    from veil.training.sampling import negative_guidance_target

    method = veil.get_method(method_name)(concepts=["circle"], contexts=["a red {} on a table"], context_probability=1.0,
                                          ddim_steps=4, samples_per_trajectory=2, max_train_steps=1)
    method.attach(tiny_pipe)
    batch = method.make_batch(tiny_pipe, torch.Generator().manual_seed(0))
    cond = encode_prompts(tiny_pipe, ["a red circle on a table"])
    torch.testing.assert_close(batch["cond"][:1], cond, atol=1e-5, rtol=1e-5)
    latents, timesteps = batch["latents"], batch["timesteps"]
    size = latents.shape[0]
    with torch.no_grad(), method.disabled(tiny_pipe):
        anchor = tiny_pipe.unet(latents, timesteps, encoder_hidden_states=encode_prompts(tiny_pipe, ["a red on a table"]).expand(size, -1, -1)).sample
        concept = tiny_pipe.unet(latents, timesteps, encoder_hidden_states=cond.expand(size, -1, -1)).sample
    target = batch["target_hide"] if method_name == "kpop" else batch["target"]
    torch.testing.assert_close(target, negative_guidance_target(anchor, concept, 1.0), atol=1e-4, rtol=1e-4)
    method.detach(tiny_pipe)


def test_a_context_guide_takes_the_concepts_place_in_the_anchor():
    config = ESD(concepts=["circle"], contexts=["a red {} on a table"], context_probability=1.0, context_guide="square").config
    assert config.draw_prompt("disc", torch.Generator().manual_seed(0))[1:] == ("a red disc on a table", "a red square on a table")
    config.context_guide = ""
    assert config.draw_prompt("disc", torch.Generator().manual_seed(0))[1:] == ("a red disc on a table", "a red on a table")
    # The article before the slot follows the phrase; the anchor keeps the context's own.
    config.contexts, config.context_guide = ["a {} on a table"], "orb"
    assert config.draw_prompt("disc", torch.Generator().manual_seed(0))[1:] == ("a disc on a table", "an orb on a table")
    assert config.place("An {}, plain backdrop", "circle") == "A circle, plain backdrop" and config.place("a {}", "") == "a"


def test_contexts_need_one_placeholder():
    with pytest.raises(veil.VeilError, match="exactly one"):
        ESD(concepts=["circle"], contexts=["a red circle"])
    with pytest.raises(veil.VeilError, match="context_probability"):
        ESD(concepts=["circle"], contexts=["a {}"], context_probability=1.5)


def test_draw_sample_picks_a_concept_a_phrasing_a_context_and_distinct_steps():
    from veil.methods.kpop import KPOPConfig

    config = KPOPConfig(concepts=["circle", "square"], synonyms={"circle": ["disc", "orb"]}, contexts=["a red {} on a table"],
                        context_probability=0.5, context_guide="star", ddim_steps=10, samples_per_trajectory=4)
    generator = torch.Generator().manual_seed(0)
    seen = {mode: [config.draw_sample(generator, phrases=mode) for _ in range(60)] for mode in ("never", "several", "always")}
    for mode, draws in seen.items():
        for draw in draws:
            assert len(set(draw.t_encs)) == 4 and all(0 <= t < 10 for t in draw.t_encs)
            if draw.context is None:
                assert draw.anchor == "" and draw.prompt in ("circle", "disc", "orb", "square")
            else:
                assert draw.anchor == "a red star on a table" and draw.prompt.startswith("a red ")
        phrases = {d.prompt.replace("a red ", "").replace(" on a table", "") for d in draws}
        assert phrases == ({"circle", "square"} if mode == "never" else {"circle", "disc", "orb", "square"}), mode
        assert {d.concept for d in draws} == {0, 1} and {d.context for d in draws} == {None, "a red {} on a table"}
