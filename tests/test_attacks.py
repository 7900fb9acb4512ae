"""Attacks: each lowers its own objective, key forging never touches the key, the runner and the CLI."""

import builtins
import json
import os

import numpy as np
import pytest
import torch

import veil
from veil.attacks import forging_curve, get_attack, list_attacks, make_attack, run_attacks
from veil.token_slots import PromptTemplate, encode
from veil.errors import VeilError
from veil.methods.kpop import KPOP, KPOPConfig
from veil.models import build_tiny_pipeline
from veil.training.sampling import encode_prompts

from .test_cli import assert_one_sentence_error, run_cli

CONCEPT = "circle"


def concept_images(count=4):
    from veil.shapes.data import render

    rng = np.random.default_rng(0)
    return [render(CONCEPT, colour, "plain", rng) for colour in ("red", "blue", "green", "yellow")[:count]]


@pytest.fixture(scope="module")
def hidden(tmp_path_factory):
    """A short KPOP run on the tiny model, its public artifact and its key file on disk."""
    folder = tmp_path_factory.mktemp("kpop")
    pipe = build_tiny_pipeline(seed=0)
    pipe.veil_model_name = "tiny"
    method = KPOP(KPOPConfig.paper([CONCEPT], max_train_steps=3, learning_rate=1e-3, layers="all", ddim_steps=6, num_key_tokens=4))
    veil.fit(method, pipe, progress=False)
    artifact = veil.Artifact.from_method(method, pipe)
    artifact.save(folder / "hidden")
    veil.save_key(method.key, folder / "circle.veilkey", artifact=artifact)
    method.detach(pipe)
    return pipe, method, folder


@pytest.fixture
def key_unreadable(monkeypatch, hidden):
    """Reading the key — its file, the key loaders, the trained method's key — raises."""
    _, method, folder = hidden
    secret = os.path.abspath(folder / "circle.veilkey")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == secret:
            raise AssertionError("an attack opened the key file")
        return real_open(file, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("an attack read a key")

    monkeypatch.setattr(builtins, "open", guarded_open)
    for name in ("read_key", "read_key_header", "load_key_for", "key_file_bytes"):
        monkeypatch.setattr(veil.keys, name, refuse)
    monkeypatch.setattr(KPOP, "key", property(refuse))
    return secret


def test_prompt_template_encodes_as_the_pipeline_does(tiny_pipe):
    for prompt in ("a circle", "a red circle on a plain background", ""):
        assert torch.equal(encode(tiny_pipe, PromptTemplate(tiny_pipe.tokenizer, suffix=prompt)), encode_prompts(tiny_pipe, [prompt]))
    template = PromptTemplate(tiny_pipe.tokenizer, prefix="a", suffix="circle", num_slots=2)
    ids = torch.tensor(tiny_pipe.tokenizer("red big", add_special_tokens=False).input_ids)
    table = tiny_pipe.text_encoder.get_input_embeddings().weight
    assert template.text(ids) == "a red big circle"
    with torch.no_grad():  # soft vectors equal to real tokens' rows encode as those tokens
        assert torch.allclose(encode(tiny_pipe, template, vectors=table[ids]), encode_prompts(tiny_pipe, ["a red big circle"]))
    with pytest.raises(VeilError, match="no room"):
        PromptTemplate(tiny_pipe.tokenizer, suffix="a circle", num_slots=20)


@pytest.mark.parametrize(
    "name, settings",
    [
        ("prompt_search", dict(mode="soft", max_train_steps=6, learning_rate=0.2, batch_size=4)),
        ("prompt_search", dict(mode="discrete", max_train_steps=6, learning_rate=0.5, batch_size=4)),
        ("concept_inversion", dict(max_train_steps=6, learning_rate=0.2)),
        ("ring_a_bell", dict(max_train_steps=6, num_tokens=8, strengths=[2.0], templates=["a {}", "a picture of a {}"])),
    ],
)
def test_each_attack_lowers_its_objective(tiny_pipe, name, settings):
    flags = [p.requires_grad for p in tiny_pipe.unet.parameters()]
    result = make_attack(name, settings).run(tiny_pipe, None, CONCEPT, concept_images())
    assert result.objective["after"] < result.objective["before"]
    assert result.cost["steps"] == len(result.losses) > 0 and result.cost["seconds"] >= 0 and result.cost["peak_mem_mb"] > 0
    for candidate in result.candidates:
        assert candidate.prompt_embeds.shape == encode_prompts(tiny_pipe, ["x"]).shape
        if settings.get("mode") != "soft" and name != "concept_inversion":
            assert isinstance(candidate.text, str) and candidate.text.strip()  # real, readable tokens
    assert [p.requires_grad for p in tiny_pipe.unet.parameters()] == flags  # the model is left as it was


def test_key_forging_never_reads_the_key(hidden, key_unreadable):
    _, trained, folder = hidden
    with pytest.raises(AssertionError):  # the guards are live
        open(key_unreadable, "rb")
    with pytest.raises(AssertionError):
        trained.key
    pipe = build_tiny_pipeline(seed=0)
    artifact = veil.load_artifact(folder / "hidden")  # the public artifact, from disk
    method = artifact.attach(pipe)
    attack = make_attack("key_forging", dict(max_train_steps=6, learning_rate=0.05))
    result = attack.run(pipe, method, CONCEPT, concept_images())
    assert result.objective["after"] < result.objective["before"]
    forged_k, forged_v = result.candidates[0].key
    assert forged_k.shape == forged_v.shape == (4, pipe.text_encoder.config.hidden_size)
    artifact.detach(pipe)
    # Against the in-memory method that trained the key (the bench's case), the key stays untouched too.
    pipe2 = build_tiny_pipeline(seed=0)
    trained.attach(pipe2)
    try:
        make_attack("key_forging", dict(max_train_steps=2)).run(pipe2, trained, CONCEPT, concept_images(2))
    finally:
        trained.detach(pipe2)


def _labels_every_other(images):
    return {"shape": [CONCEPT if i % 2 == 0 else "square" for i in range(len(images))]}


def test_run_attacks_scores_before_and_after(tiny_pipe):
    esd = veil.get_method("esd")(concepts=[CONCEPT], max_train_steps=1, ddim_steps=4)
    esd.attach(tiny_pipe)
    configs = {"prompt_search": dict(max_train_steps=2), "ring_a_bell": dict(max_train_steps=2, num_tokens=6, strengths=[1.0, 3.0], templates=["a {}"])}
    report = run_attacks(tiny_pipe, esd, CONCEPT, concept_images(2), ["prompt_search", "ring_a_bell", "key_forging"],
                         _labels_every_other, seeds=(0, 1), num_inference_steps=2, configs=configs, return_images=True)
    assert report["before"] == 0.5 and report["prompt"] == "a circle"
    assert report["attacks"]["key_forging"] == {"skipped": "key_forging does not apply to esd"}
    ring = report["attacks"]["ring_a_bell"]
    assert ring["attack_success_rate"] == 0.5 and len(ring["candidates"]) == 2 and ring["cost"]["steps"] == 4
    assert len(report["images"]["ring_a_bell"]) == 2 and len(report["images"]["before"]) == 2
    json.dumps({k: v for k, v in report.items() if k != "images"})  # JSON-ready
    assert esd.attached_to is tiny_pipe  # left attached, as it came


def test_forging_curve_measures_steps_to_half_recovery(hidden, monkeypatch):
    pipe, trained, _ = hidden
    reference = trained.key  # the evaluator's copy, taken before the attack
    calls = []

    def classify(images):  # public: none; real key: all; forged: none at step 0, then all
        calls.append(len(images))
        return [CONCEPT if len(calls) not in (1, 3) else "square" for _ in images]

    monkeypatch.setattr(KPOP, "key", property(lambda self: (_ for _ in ()).throw(AssertionError("key read"))))
    curve = forging_curve(pipe, trained, CONCEPT, concept_images(2), classify, eval_steps=[0, 1, 3], reference_key=reference,
                          config=dict(learning_rate=0.05), seeds=(0, 1), num_inference_steps=2)
    assert curve["steps"] == [0, 1, 3] and curve["forged_rate"] == [0.0, 1.0, 1.0]
    assert curve["public_rate"] == 0.0 and curve["real_key_rate"] == 1.0 and curve["half_recovery_rate"] == 0.5
    assert curve["steps_to_half"] == 1 and curve["cost"]["steps"] == 3
    assert trained.attached_to is None


def test_attack_registry_and_configs():
    assert list_attacks() == ["concept_inversion", "key_forging", "prompt_search", "ring_a_bell"]
    with pytest.raises(VeilError, match="Did you mean 'prompt_search'"):
        get_attack("promt_search")
    config = get_attack("prompt_search").config_class()
    assert (config.num_tokens, config.max_train_steps, config.learning_rate) == (5, 40, 1e-2)
    assert all(get_attack(n).config_class.help()[f] for n in list_attacks() for f in get_attack(n).config_class.help())
    with pytest.raises(VeilError, match="max train steps must be greater than 0"):
        make_attack("concept_inversion", dict(max_train_steps=0))
    with pytest.raises(VeilError, match="mode must be one of"):
        make_attack("ring_a_bell", dict(mode="genetic"))
    with pytest.raises(VeilError, match="no field 'steps'"):
        make_attack("key_forging", dict(steps=3))
    with pytest.raises(VeilError, match="No concept images"):
        make_attack("concept_inversion", dict(max_train_steps=1)).run(build_tiny_pipeline(0), None, CONCEPT, [])


def test_cli_attack_writes_results_and_forging_curve(hidden, key_unreadable, tmp_path, capsys):
    _, _, folder = hidden
    out = tmp_path / "attack"
    code, stdout, err = run_cli(capsys, "attack", "--attack", "prompt_search", "--artifact", folder / "hidden", "--concept", CONCEPT,
                                "--model", "tiny", "--steps", "2", "--out", out, "--num-images", "2", "--seeds", "0,1",
                                "--num-inference-steps", "2", "--classifier", "shapes")
    assert code == 0, err
    report = json.loads((out / "attack.json").read_text())
    entry = report["attacks"]["prompt_search"]
    assert entry["cost"]["steps"] == 2 and 0 <= entry["attack_success_rate"] <= 1 and "attack success" in stdout
    assert (out / "grid.png").is_file() and (out / "attack.safetensors").is_file()

    out = tmp_path / "forged"
    code, stdout, err = run_cli(capsys, "attack", "--attack", "key_forging", "--artifact", folder / "hidden", "--concept", CONCEPT,
                                "--model", "tiny", "--steps", "2", "--out", out, "--num-images", "2", "--seeds", "0",
                                "--num-inference-steps", "2", "--eval-steps", "0,2", "--images", "render")
    assert code == 0, err
    report = json.loads((out / "attack.json").read_text())
    assert report["forging_curve"]["steps"] == [0, 2] and report["forging_curve"]["forged_rate"] == [None, None]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--attack", "promt_search"], ["Unknown attack 'promt_search'", "Did you mean 'prompt_search'?"]),
        (["--attack", "prompt_search", "--concept", "square"], ["not 'square'"]),
        (["--attack", "key_forging", "--tokens", "3"], ["no token budget"]),
        (["--attack", "prompt_search", "--set", "mode=genetic"], ["mode must be one of"]),
        (["--attack", "prompt_search", "--images", "nowhere"], ["neither 'original', 'render' nor a folder"]),
        (["--attack", "prompt_search", "--eval-steps", "0,1"], ["--eval-steps"]),
    ],
)
def test_cli_attack_bad_input_is_one_sentence(hidden, tmp_path, capsys, argv, fragments):
    _, _, folder = hidden
    base = ["attack", "--artifact", folder / "hidden", "--model", "tiny", "--out", tmp_path / "x", "--steps", "1", "--num-inference-steps", "1"]
    if "--concept" not in argv:
        base += ["--concept", CONCEPT]
    code, _, err = run_cli(capsys, *base, *argv)
    assert_one_sentence_error(code, err, *fragments)
    assert not (tmp_path / "x").exists()


def test_cli_key_forging_needs_a_keyed_artifact(tmp_path, capsys):
    code, _, err = run_cli(capsys, "erase", "--method", "esd", "--concept", CONCEPT, "--model", "tiny", "--steps", "1",
                           "--set", "ddim_steps=4", "--out", tmp_path / "esd")
    assert code == 0, err
    code, _, err = run_cli(capsys, "attack", "--attack", "key_forging", "--artifact", tmp_path / "esd", "--concept", CONCEPT,
                           "--model", "tiny", "--out", tmp_path / "x")
    assert_one_sentence_error(code, err, "Key forging attacks an artifact written by veil hide", "esd")


def test_bench_attack_rows_and_table(tiny_pipe):
    from veil.bench import _attack_rows, markdown_table, render_concept_images

    images = render_concept_images("red", 3)
    assert len(images) == 3 and images[0].shape == (32, 32, 3)
    esd = veil.get_method("esd")(concepts=[CONCEPT], max_train_steps=1, ddim_steps=4)
    esd.attach(tiny_pipe)
    attacks = _attack_rows(esd, tiny_pipe, CONCEPT, ["concept_inversion", "key_forging"], {"concept_inversion": {"max_train_steps": 1}},
                           _labels_every_other, (0, 1), {"num_inference_steps": 1, "guidance_scale": 3.0}, log=lambda m: None)
    assert attacks["prompt"] == "a circle" and attacks["attacks"]["concept_inversion"]["attack_success_rate"] == 0.5
    row = {"method": "esd", "concept": CONCEPT, "base_target_rate": 1.0, "target_rate": 0.0, "base_synonym_rate": None,
           "synonym_rate": None, "base_paraphrase_rate": None, "paraphrase_rate": None, "nontarget_share": None,
           "nontarget_min_share": None, "other_kinds_share": None, "seconds": 1.0, "peak_mem_mb": 1.0, "artifact_mb": 0.1,
           "attacks": attacks}
    table = markdown_table({"model": "tiny", "seeds": [0], "num_inference_steps": 1, "guidance_scale": 3.0, "rows": [row]})
    assert "| esd | circle | 50.0 % | 50.0 % | — |" in table


def test_cli_forging_curve_with_the_reference_key(hidden, tmp_path, capsys):
    _, _, folder = hidden
    out = tmp_path / "curve"
    code, _, err = run_cli(capsys, "attack", "--attack", "key_forging", "--artifact", folder / "hidden", "--concept", CONCEPT,
                           "--model", "tiny", "--steps", "1", "--out", out, "--num-images", "2", "--seeds", "0,1",
                           "--num-inference-steps", "1", "--eval-steps", "0,1", "--key", folder / "circle.veilkey", "--classifier", "shapes")
    assert code == 0, err
    curve = json.loads((out / "attack.json").read_text())["forging_curve"]
    assert curve["real_key_rate"] is not None and len(curve["forged_rate"]) == 2 and "key" not in json.dumps(curve["config"])
