"""Many concepts at once: one artifact per run, every concept in its manifest, scored by eval and bench."""

import contextlib
import json

import pytest
import torch

import veil
from veil import bench
from veil.methods.kpop import KPOP, KPOPConfig
from veil.methods.kpop.keys import load_key_for, save_key
from veil.models import build_tiny_pipeline
from veil.training.sampling import encode_prompts

from .test_cli import assert_one_sentence_error, run_cli
from .test_kpop import STRICT_GATE, _prediction_gaps

TWO = ["circle", "square"]
# Each method's smallest run on the tiny model: seconds, not a working erasure.
TINY = {
    "esd": dict(max_train_steps=2, ddim_steps=2, samples_per_trajectory=1),
    "kpop": dict(max_train_steps=2, ddim_steps=2, samples_per_trajectory=1),
    "dumo": dict(max_train_steps=2, tlmo_max_train_steps=2, ddim_steps=2, samples_per_trajectory=1),
    "mace": dict(images_per_concept=1, generation_steps=2, max_train_steps=1),
    "advunlearn": dict(max_train_steps=2, warmup_steps=1, attack_steps=1, ddim_steps=2, samples_per_trajectory=1),
    "uce": {}, "rece": dict(epochs=1), "safree": {}, "sld": {},
}


def one_sentence(text):
    return bool(text) and text.endswith(".") and ". " not in text and "\n" not in text


@pytest.mark.parametrize("name", veil.list_methods())
def test_every_method_takes_several_concepts_or_refuses_them_in_one_sentence(name):
    cls = veil.get_method(name)
    assert (cls.multi_concept is None) != (cls.single_concept_refusal is None), f"{name}: set exactly one of the two"
    if cls.single_concept_refusal is not None:
        assert one_sentence(cls.single_concept_refusal)
        with pytest.raises(veil.VeilError, match=cls.single_concept_refusal[:30]):
            cls(concepts=TWO)
        return
    assert one_sentence(cls.multi_concept), cls.multi_concept
    assert cls(concepts=TWO).config.concepts == TWO


def test_a_method_taking_one_concept_refuses_two_with_its_sentence():
    class OneOnly(veil.get_method("esd")):
        multi_concept = None
        single_concept_refusal = "This method erases one concept per artifact; run it once per concept."

    assert OneOnly(concepts=["circle"]).config.concepts == ["circle"]
    with pytest.raises(veil.VeilError, match="one concept per artifact"):
        OneOnly(concepts=TWO)


def test_a_concept_given_twice_is_refused():
    with pytest.raises(veil.VeilError, match="'circle' is given twice"):
        veil.get_method("uce")(concepts=["circle", "square", "circle"])


@pytest.mark.parametrize("name", veil.list_methods())
def test_every_method_fits_several_concepts_into_one_artifact_that_round_trips(name, tmp_path):
    assert name in TINY, f"add {name}'s smallest tiny-model settings to TINY"
    if veil.get_method(name).single_concept_refusal:
        with pytest.raises(veil.VeilError):
            veil.get_method(name)(concepts=TWO, **TINY[name])
        return
    pipe = build_tiny_pipeline(seed=0)
    pipe.veil_model_name = "tiny"
    method = veil.get_method(name)(concepts=TWO, **TINY[name])
    cost = veil.fit(method, pipe, progress=False)
    artifact = veil.Artifact.from_method(method, pipe, {k: v for k, v in cost.items() if k != "losses"})
    artifact.save(str(tmp_path / "a"))
    generator = torch.Generator().manual_seed(0)
    prompt = ["a circle", "a square"]
    fitted = pipe(prompt, num_inference_steps=2, generator=generator, output_type="pt").images
    method.detach(pipe)
    loaded = veil.load_artifact(str(tmp_path / "a"))
    assert loaded.concepts == TWO and json.loads((tmp_path / "a" / "veil.json").read_text())["concepts"] == TWO
    loaded.attach(pipe)
    again = pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(fitted, again)


def test_erase_takes_repeated_concepts_or_a_config_list_and_writes_one_artifact(tmp_path, capsys):
    code, out, err = run_cli(capsys, "erase", "--method", "uce", "--model", "tiny", "--concept", "circle", "--concept", "square",
                             "--out", tmp_path / "flags")
    assert code == 0, err
    assert "Erased circle, square with uce" in out
    assert json.loads((tmp_path / "flags" / "veil.json").read_text())["concepts"] == TWO

    config = tmp_path / "uce.yaml"
    config.write_text("concepts: [circle, square, triangle]\nregularization: 0.2\n")
    code, out, err = run_cli(capsys, "erase", "--method", "uce", "--model", "tiny", "--config", config, "--out", tmp_path / "file")
    assert code == 0, err
    manifest = json.loads((tmp_path / "file" / "veil.json").read_text())
    assert manifest["concepts"] == ["circle", "square", "triangle"] and manifest["config"]["regularization"] == 0.2
    # --concept wins over the file's list.
    code, _, err = run_cli(capsys, "erase", "--method", "uce", "--model", "tiny", "--config", config, "--concept", "star",
                           "--out", tmp_path / "flag-wins")
    assert code == 0, err
    assert json.loads((tmp_path / "flag-wins" / "veil.json").read_text())["concepts"] == ["star"]


def test_erase_without_any_concept_or_with_one_twice_is_refused_in_one_sentence(tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--method", "uce", "--model", "tiny", "--out", tmp_path / "none")
    assert code == 2
    assert_one_sentence_error(code, err, "No concept given", "--concept")
    code, _, err = run_cli(capsys, "erase", "--method", "uce", "--model", "tiny", "--concept", "circle", "--concept", "circle",
                           "--out", tmp_path / "twice")
    assert code == 2
    assert_one_sentence_error(code, err, "'circle' is given twice")
    assert not (tmp_path / "none").exists() and not (tmp_path / "twice").exists()


def test_ls_says_how_each_method_takes_several_concepts(capsys):
    code, out, _ = run_cli(capsys, "ls", "methods", "-v")
    assert code == 0
    assert out.count("several concepts: ") == len(veil.list_methods())
    assert veil.get_method("kpop").multi_concept in out


def test_hide_writes_one_artifact_and_one_key_file_holding_every_concept(tmp_path, capsys):
    code, out, err = run_cli(capsys, "hide", "--model", "tiny", "--concept", "circle", "--concept", "square", "--steps", "1",
                             "--set", "ddim_steps=2", "--set", "samples_per_trajectory=1",
                             "--out", tmp_path / "hidden", "--key-out", tmp_path / "both.veilkey")
    assert code == 0, err
    artifact = veil.load_artifact(str(tmp_path / "hidden"))
    assert artifact.concepts == TWO and set(artifact.manifest["key_fingerprint"]) == set(TWO)
    key = load_key_for(tmp_path / "both.veilkey", artifact)
    assert key.concepts == TWO


@pytest.fixture(scope="module")
def two_hidden():
    """KPOP hiding two concepts on the tiny model: one key each, trained on the steps that draw its concept."""
    pipe = build_tiny_pipeline(seed=0)
    pipe.veil_model_name = "tiny"
    method = KPOP(KPOPConfig.paper(["a red circle", "a blue square"], max_train_steps=120, learning_rate=1e-3,
                                   key_learning_rate=1e-2, layers="all", ddim_steps=10))
    veil.fit(method, pipe, progress=False)
    return pipe, method


def _predict(pipe, method, prompts, key=None, routed=False):
    """The UNet's prediction for each prompt (two latents each), with ``key`` attached (routed or not) or without."""
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2 * len(prompts), 4, 8, 8, generator=generator)
    timesteps = torch.randint(0, 1000, (2 * len(prompts),), generator=generator)
    embeds = encode_prompts(pipe, list(prompts)).repeat_interleave(2, dim=0)
    unlocked = method.unlocked(pipe, key, routed=routed, gate=STRICT_GATE) if key is not None else contextlib.nullcontext()
    with torch.no_grad(), unlocked:
        return pipe.unet(latents, timesteps, encoder_hidden_states=embeds).sample


def test_kpop_each_concepts_key_unlocks_it_and_the_routed_key_file_gives_each_prompt_its_own(two_hidden):
    pipe, method = two_hidden
    key = method.key
    for concept in ("a red circle", "a blue square"):
        public, own, random = _prediction_gaps(pipe, method, concept, key.subset([concept]))
        assert own < 0.3 * public, (concept, public, own)  # the concept's own key brings the original back
        assert own < 0.5 * random, (concept, random, own)  # a random key of the same norm does much less
        _, whole, _ = _prediction_gaps(pipe, method, concept, key)
        assert whole < public, (concept, public, whole)  # unrouted, the whole file appends the other key too
    # Routed, the whole key file gives each prompt of a batch only the key of the concept it is about, and none to
    # a prompt about neither.
    prompts = ["a red circle", "a blue square", "a green star"]
    routed = _predict(pipe, method, prompts, key, routed=True)
    for i, prompt in enumerate(prompts):
        alone = _predict(pipe, method, prompts, key.subset([prompt])) if prompt in key else _predict(pipe, method, prompts)
        torch.testing.assert_close(routed[2 * i:2 * i + 2], alone[2 * i:2 * i + 2], atol=1e-4, rtol=0)
    assert not torch.allclose(routed[:2], _predict(pipe, method, prompts, key)[:2], atol=1e-4)  # the other key is left out


def test_a_key_file_split_per_concept_unlocks_only_its_concept(two_hidden, tmp_path):
    pipe, method = two_hidden
    artifact = veil.Artifact.from_method(method, pipe)
    save_key(method.key.subset(["a blue square"]), tmp_path / "square.veilkey", artifact=artifact)
    loaded = load_key_for(tmp_path / "square.veilkey", artifact)
    assert loaded.concepts == ["a blue square"]
    other = veil.Artifact.from_method(KPOP(KPOPConfig.paper(["a blue square"])), pipe)
    other.manifest["key_fingerprint"] = {"a blue square": "0" * 64}
    with pytest.raises(veil.VeilError, match="belongs to another artifact"):
        load_key_for(tmp_path / "square.veilkey", other)


def test_eval_scores_every_erased_concept(tmp_path, capsys):
    pipe = veil.load_pipeline("tiny")
    method = veil.get_method("uce")(concepts=TWO)
    veil.fit(method, pipe, progress=False)
    veil.Artifact.from_method(method, pipe).save(str(tmp_path / "erased"))
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,seed,shape,colour,background\na circle,0,circle,,\na square,0,square,,\na star,0,star,,\n")
    code, _, err = run_cli(capsys, "eval", "--task", "shapes_concepts", "--prompts", prompts, "--model", "tiny",
                           "--num-inference-steps", "1", "--artifact", tmp_path / "erased", "--out", tmp_path / "r")
    assert code == 0, err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["config"]["targets"] == TWO and results["artifact"]["concepts"] == TWO
    erased = results["metrics"]["erased"]["concept_rate"]
    assert erased["target_rate"] == pytest.approx((erased["rates"]["circle"] + erased["rates"]["square"]) / 2)
    assert erased["nontarget_rate"] == pytest.approx(erased["rates"]["star"])


def test_bench_scores_a_group_of_concepts_erased_together(world1, tiny_pipe, tmp_path, monkeypatch):
    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    after_rates = {"circle": 0.2, "square": 0.4}
    seen = []

    def fake_evaluate(pipe, rows, *args):
        edited = any(not torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
        named = {r[axis] for r in rows for axis in ("shape", "colour", "background") if r.get(axis)}
        seen.append((edited, {r["shape"] for r in rows}))
        rates = {c: (after_rates.get(c, 1.0) if edited else 1.0) for c in named}
        return {"rates": rates, "kinds": {}, "counts": {}, "images": [None] * len(rows), "labels": {}}

    monkeypatch.setattr(bench, "_evaluate", fake_evaluate)
    monkeypatch.setattr(bench, "labelled_grid", lambda *a: type("Grid", (), {"save": lambda self, path: None})())
    run = dict(classify=None, seeds=(0,), num_inference_steps=1, progress=False, log=lambda m: None)
    report = bench.run_bench(tiny_pipe, ["uce"], ["circle+square"], str(tmp_path), **run)
    row = report["rows"][0]
    assert row["concept"] == "circle+square" and row["concepts"] == TWO
    assert veil.load_artifact(str(tmp_path / row["artifact"])).concepts == TWO  # one artifact
    assert row["target_rates"] == after_rates and row["target_rate"] == pytest.approx(0.3)
    assert row["base_target_rate"] == 1.0
    assert not {"circle", "square"} & set(row["nontarget_shares"]) and row["nontarget_shares"]["triangle"] == 1.0
    # The synonym, paraphrase and short prompts are the group's: each names circle or square.
    subsets = [shapes for edited, shapes in seen if edited][1:]
    assert subsets and all(shapes <= {"circle", "square", None} for shapes in subsets)

    with pytest.raises(veil.VeilError, match="Attacks run on one concept per row"):
        bench.run_bench(tiny_pipe, ["uce"], ["circle+square"], str(tmp_path / "b"), attacks=("prompt_search",), **run)


def test_bench_cli_refuses_an_unknown_concept_in_a_group(capsys, tmp_path):
    code, _, err = run_cli(capsys, "bench", "--model", "tiny", "--methods", "uce", "--concepts", "circle+hexagon",
                           "--out", tmp_path / "b")
    assert_one_sentence_error(code, err, "'hexagon' is not a shapes-world concept")
    code, _, err = run_cli(capsys, "bench", "--model", "tiny", "--methods", "uce", "--concepts", "circle+square",
                           "--attacks", "prompt_search", "--out", tmp_path / "b")
    assert_one_sentence_error(code, err, "Attacks run on one concept per row")
