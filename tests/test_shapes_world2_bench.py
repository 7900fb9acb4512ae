"""Shapes world 2 as the bundled world: world-aware lookups, every preset's concept sets, and the bench's implicit,
style and many-concept rows (CPU, seconds; the bench draws with a stand-in scorer, nothing heavy is trained)."""

import json

import numpy as np
import pytest
from PIL import Image

import veil
import veil.shapes
from veil import bench
from veil.shapes import data as W1
from veil.shapes import model_world
from veil.shapes import world2 as W2

from tests.conftest import bundle_world as _bundle


@pytest.fixture
def world2(monkeypatch):
    _bundle(monkeypatch, 2)
    return W2


def _build(tmp_path, version):
    (tmp_path / "pipeline").mkdir(parents=True)
    (tmp_path / "world.json").write_text(json.dumps({"version": version}))
    (tmp_path / "paraphrase_prompts.csv").write_text("prompt,seed,shape,colour,background,style\na hazy red circle,3,circle,red,,soft-edged\n")
    return str(tmp_path)


# ----------------------------------------------------------------------------- lookups
def test_lookups_follow_the_bundled_world_or_the_models_own(tmp_path, monkeypatch):
    _bundle(monkeypatch, 1)
    folder = _build(tmp_path / "w2", 2)
    assert model_world("shapes") is W1 and model_world("tiny") is W1 and model_world(folder) is W2
    assert list(bench.prompt_sets("tiny", (0,))) == list(bench.SETS)
    sets = bench.prompt_sets(folder, (0,))
    assert list(sets) == [*bench.SETS, *bench.WORLD2_SETS]
    assert {r["split"] for r in sets["implicit"]} == {"train"} and {r["split"] for r in sets["heldout_implicit"]} == {"heldout"}
    assert len(sets["canonical"]) == 360 and all(r["style"] for r in sets["styles"])
    images = bench.render_concept_images("hatched", 3, model=folder)
    assert len(images) == 3 and images[0].shape == (32, 32, 3)
    assert np.array_equal(images[1], bench.render_concept_images("hatched", 3, model=folder)[1])
    with pytest.raises(KeyError):
        bench.render_concept_images("hatched", 1)  # world 1 has no styles
    _bundle(monkeypatch, 2)
    assert model_world("tiny") is W2 and model_world("shapes") is W2  # the bundled world, once it is world 2
    assert model_world(_build(tmp_path / "w1", 1)) is W1


def test_mace_renderer_and_dumo_anchors_follow_the_world(tiny_pipe, monkeypatch):
    from veil.methods.dumo.config import DuMoConfig
    from veil.methods.mace import MACE

    _bundle(monkeypatch, 1)
    world1 = DuMoConfig(concepts=["circle"]).anchor_prompts
    assert len(world1) == 24 + 30 and "a orange circle on a striped background" in world1  # the measured pool, as it was
    with pytest.raises(veil.VeilError, match="shapes-world concepts"):
        MACE(concepts=["hatched"], region="renderer")
    _bundle(monkeypatch, 2)
    world2 = DuMoConfig(concepts=["circle"]).anchor_prompts
    assert len(world2) == 24 + 72 and "a hatched green pentagon on a plain background" in world2
    assert W2.heldout_phrases_in(world2) == []
    method = MACE(concepts=["hatched"], region="renderer", images_per_concept=5)
    latents, prompts, phrases, masks = method._rendered(tiny_pipe, 0)
    assert latents.shape[0] == 5 and phrases == ["hatched", "hatched", "hatched", "hatched", "hatched"]
    assert all(p.startswith("a hatched ") and p.endswith(" background") for p in prompts)
    assert all(any(f" {s} " in p for s in W2.SHAPES) for p in prompts) and float(masks.min()) >= 0 and float(masks.max()) > 0.5


# ----------------------------------------------------------------------------- presets
WORLD2_CONCEPTS = ["hatched", "soft-edged", "pentagon", "crescent", "circle", "dotted", "circle+square+triangle",
                   "+".join(W2.SHAPES[:6])]


def test_every_shapes_preset_resolves_on_world2_concepts_and_reaches_no_heldout_phrase(world2):
    """The whole config each method is fitted with (preset, concept sets and defaults), as the bench builds it."""
    from veil.registry import get_method, list_methods

    names = [n for n in list_methods() if "shapes" in get_method(n).model_presets]
    assert len(names) >= 8
    for name in names:
        cls = get_method(name)
        for concept in WORLD2_CONCEPTS:
            config = bench.bench_config(cls, "shapes", concept).to_dict()
            assert W2.heldout_phrases_in(config) == [], (name, concept)
    uce = bench.bench_config(get_method("uce"), "shapes", "hatched").to_dict()
    assert uce["guide"] == "filled" and {"pentagon", "outlined", "soft-edged"} <= set(uce["preserve_concepts"])
    assert "hatched" not in uce["preserve_concepts"] and uce["synonyms"] == {"hatched": ["hatch-shaded", "engraved", "etched"]}
    kpop = bench.bench_config(get_method("kpop"), "shapes", "hatched").to_dict()
    assert kpop["decoy_words"] == ["filled", "outlined", "pixelated", "soft-edged"]
    assert kpop["contexts"] and all("{}" in c for c in kpop["contexts"]) and any("pentagon" in c for c in kpop["contexts"])
    dumo = bench.bench_config(get_method("dumo"), "shapes", "+".join(W2.SHAPES[:6])).to_dict()
    assert dumo["context_guide"] == "heart" and dumo["epr_preserve_concepts"] == list(W2.SHAPES[6:])
    mace = bench.bench_config(get_method("mace"), "shapes", "crescent").to_dict()
    assert mace["region"] == "renderer" and mace["guide"] == "circle" and "hatched" in mace["preserve_concepts"]


# ----------------------------------------------------------------------------- bench rows
def _fake_scoring(monkeypatch):
    """A stand-in for drawing and scoring: each image is labelled as its prompt names it, except after a fit, where
    the erased shapes are drawn as squares (circles) unless named by a held-out object, an erased style is drawn
    filled and its stars as circles, and with three shapes erased every cross becomes a circle."""
    from veil.evaluation.concept_rate import concept_rates

    state = {"erased": set(), "drawn": 0}
    real_fit = bench.fit

    def fit(method, pipe, **kwargs):
        state["erased"] = set(method.config.concepts)
        return real_fit(method, pipe, **kwargs)

    def evaluate(pipe, rows, classify, settings):
        erased, labels = state["erased"], {k: [] for k in ("shape", "colour", "background", "style")}
        for r in rows:
            shape, style = r["shape"] or "circle", r.get("style") or "filled"
            if shape in erased and r.get("split") != "heldout":
                shape = "square" if shape != "square" else "circle"
            if style in erased:
                style, shape = "filled", "circle" if shape == "star" else shape
            if len(erased) == 3 and shape == "cross":
                shape = "circle"
            for k, v in (("shape", shape), ("colour", r["colour"] or "red"), ("background", r["background"] or "plain"),
                         ("style", style)):
                labels[k].append(v)
        state["drawn"] += len(rows)
        return {**concept_rates(rows, labels), "images": [Image.new("RGB", (32, 32))] * len(rows), "labels": labels}

    monkeypatch.setattr(bench, "fit", fit)
    monkeypatch.setattr(bench, "_evaluate", evaluate)
    return state


def _run(pipe, out, concepts, methods=("uce",)):
    return bench.run_bench(pipe, list(methods), concepts, str(out), classify=None, seeds=(0,), num_inference_steps=1,
                           progress=False, log=lambda m: None)


def test_world2_bench_rows_implicit_styles_and_many_concepts(world2, tiny_pipe, tmp_path, monkeypatch):
    from veil.evaluation.report import build_report

    state = _fake_scoring(monkeypatch)
    report = _run(tiny_pipe, tmp_path, ["circle", "hatched", "circle+square+triangle"])
    assert set(report["base"]) == {*bench.SETS, *bench.WORLD2_SETS, *(f"styles/{t}" for t in W2.STYLES)}
    assert report["base"]["styles/hatched"]["rates"]["hatched"] == 1.0
    rows = {r["concept"]: r for r in report["rows"]}

    circle = rows["circle"]
    assert circle["base_implicit_rate"] == 1.0 and circle["implicit_rate"] == 0.0
    assert circle["base_heldout_implicit_rate"] == 1.0 and circle["heldout_implicit_rate"] == 1.0  # held-out objects leak
    assert "style_rate" not in circle and circle["min_other_share"] == 1.0  # every world-2 row has the lowest other share

    hatched = rows["hatched"]
    assert hatched["implicit_rate"] is None and hatched["heldout_implicit_rate"] is None  # no shape erased
    assert hatched["base_style_rate"] == 1.0 and hatched["style_rate"] == 0.0
    assert hatched["base_style_shape_rate"] == 1.0 and hatched["style_shape_rate"] == pytest.approx(11 / 12)
    assert hatched["style_shape_shares"]["star"] == 0.0 and hatched["style_shape_min_share"] == 0.0
    assert set(hatched["style_shape_shares"]) == set(W2.SHAPES)

    group = rows["circle+square+triangle"]
    assert group["target_rate"] == 0.0 and group["implicit_rate"] == 0.0 and group["heldout_implicit_rate"] == 1.0
    assert group["lowest_other"] == "cross" and group["min_other_share"] == 0.0 and group["nontarget_shares"]["pentagon"] == 1.0
    assert all(W2.heldout_phrases_in(r["config"]) == [] for r in report["rows"])  # what each method was given

    md = (tmp_path / "bench.md").read_text()
    assert "| uce | circle | 100.0 % → 0.0 % | 100.0 % → 100.0 % |" in md  # implicit: training objects, held-out objects
    assert "| uce | hatched | 100.0 % → 0.0 % | 100.0 % → 91.7 % | star 0.0 % |" in md
    assert "| uce | 3: circle+square+triangle | 0.0 % | circle 0.0 %, square 0.0 %, triangle 0.0 % | cross 0.0 % |" in md
    assert "| uce | 1: circle | 0.0 % | circle 0.0 % | " in md
    html = build_report([str(tmp_path)])
    assert all(f">{c}</th>" in html for c in ("implicit_rate", "heldout_implicit_rate", "style_shape_rate", "min_other_share"))

    # --resume keeps the base (its style splits too) and measures a new row against it without drawing it again
    drawn = state["drawn"]
    resumed = bench.run_bench(tiny_pipe, ["sld"], ["soft-edged"], str(tmp_path), classify=None, seeds=(0,), num_inference_steps=1,
                              progress=False, log=lambda m: None, resume=True)
    new = next(r for r in resumed["rows"] if r["method"] == "sld")
    assert new["base_style_rate"] == 1.0 and new["style_rate"] == 0.0 and new["style_shape_min_share"] == 0.0
    assert state["drawn"] - drawn < sum(len(r) for r in bench.prompt_sets("shapes", (0,)).values()) / 3  # no base pass


def test_world1_bench_rows_are_as_they_were(tiny_pipe, tmp_path, monkeypatch):
    _bundle(monkeypatch, 1)
    _fake_scoring(monkeypatch)
    report = _run(tiny_pipe, tmp_path, ["circle"])
    assert set(report["base"]) == set(bench.SETS)
    rates = [f"{p}{n}_rate" for n in ("target", "synonym", "paraphrase", "short") for p in ("base_", "")]
    assert list(report["rows"][0]) == ["method", "concept", *rates, "nontarget_share", "nontarget_min_share", "other_kinds_share",
                                       "nontarget_shares", "seconds", "peak_mem_mb", "artifact_mb", "artifact", "config"]
    md = (tmp_path / "bench.md").read_text()
    assert "Implicit prompts" not in md and "Style rows" not in md and "Many concepts" not in md


def test_multi_concept_script_summarises_in_the_models_world():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "multi_concept.py"
    spec = importlib.util.spec_from_file_location("multi_concept", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = {c: 1.0 for c in W2.CONCEPT_KIND}
    row = {"concepts": list(W2.SHAPES[:3]), "rates": {**base, "circle": 0.0, "square": 0.0, "triangle": 0.5, "hatched": 0.4}}
    out = module.summarise(row, base, W2.CONCEPT_KIND)
    assert out["target_rate"] == pytest.approx(1 / 6, abs=1e-4) and out["lowest_other"] == "hatched"
    assert out["lowest_other_share"] == 0.4 and "pentagon" in out["other_shares"]


def test_demo_and_bench_cli_take_world2_shapes(world2, tmp_path, capsys, monkeypatch):
    """The demo hides a world-2 shape and draws its showcase in every style; the bench refuses a shape of no world."""
    import veil.shapes.classifier
    from tests.test_cli import assert_one_sentence_error, run_cli

    def labels(images):  # a world-2 scorer that sees a square everywhere
        n = len(images)
        return {"shape": ["square"] * n, "colour": ["red"] * n, "background": ["plain"] * n, "style": ["filled"] * n}

    monkeypatch.setattr(veil.shapes.classifier, "classifier_for", lambda model="shapes": labels)
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--model", "tiny", "--method", "uce", "--concept", "pentagon", "--out", out)
    assert code == 0, err
    rates = json.loads((out / "rates.json").read_text())["rates"]
    assert rates["original"] == {"pentagon": 0.0, "square": 1.0, "pentagon, short": 0.0}
    from PIL import Image

    assert Image.open(out / "grid.png").width > 7 * 96  # five styles of pentagon and two squares
    code, _, err = run_cli(capsys, "demo", "--model", "tiny", "--concept", "hexagon", "--out", tmp_path / "d2")
    assert_one_sentence_error(code, err, "'hexagon' is not one of", "pentagon")
    code, _, err = run_cli(capsys, "bench", "--model", "tiny", "--concepts", "hatched,hexagon", "--out", tmp_path / "b")
    assert_one_sentence_error(code, err, "'hexagon' is not a shapes-world concept", "soft-edged")
