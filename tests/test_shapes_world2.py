"""Shapes world 2: renderer, captions and splits, classifier heads, tasks and the build's resume logic
(CPU, offline, seconds; nothing heavy is trained)."""

import itertools
import json
import re

import numpy as np
import pytest
import torch

from veil.shapes import world2 as W
from veil.shapes import world2_build as B


# ----------------------------------------------------------------------------- renderer
def test_every_shape_and_style_renders_deterministically():
    for shape, style in itertools.product(W.SHAPES, W.STYLES):
        a, alpha = W.render_with_mask(shape, "blue", "dotted", style, np.random.default_rng(3))
        b = W.render(shape, "blue", "dotted", style, np.random.default_rng(3))
        assert a.dtype == np.uint8 and a.shape == (32, 32, 3) and np.array_equal(a, b)
        assert alpha.shape == (32, 32) and 0 <= alpha.min() and alpha.max() <= 1
        assert alpha.sum() > 15, (shape, style)  # the object is drawn
        assert alpha[0].max() < 0.05 and alpha[-1].max() < 0.05, (shape, style)  # and stays inside the frame
    assert not np.array_equal(W.render("heart", "red", "plain", "filled", np.random.default_rng(1)),
                              W.render("heart", "red", "plain", "filled", np.random.default_rng(2)))


def test_styles_change_the_rendering_not_the_shape_or_colour():
    """Same rng state: the same object geometry and colour, drawn five ways."""
    cover = {t: W.render_with_mask("square", "orange", "plain", t, np.random.default_rng(5))[1] for t in W.STYLES}
    filled = cover["filled"]
    assert 0.25 < cover["outlined"].sum() / filled.sum() < 0.7  # a band along the edge
    assert cover["outlined"][16, 16] < 0.05 and filled[16, 16] > 0.95  # hollow inside
    assert 0.4 < cover["hatched"].sum() / filled.sum() < 0.9
    assert set(np.unique(cover["pixelated"])) == {0.0, 1.0}  # hard-edged blocks
    assert 0.85 < cover["soft-edged"].sum() / filled.sum() < 1.15 and ((cover["soft-edged"] > 0.05) & (cover["soft-edged"] < 0.95)).sum() > ((filled > 0.05) & (filled < 0.95)).sum()
    for t in W.STYLES:  # the object's pixels keep the colour's hue
        img = W.render("square", "orange", "plain", t, np.random.default_rng(5)).astype(int)
        inside = img[cover[t] > 0.99]
        assert len(inside) and (inside[:, 0] > inside[:, 2] + 80).all(), t


def test_shapes_differ_under_any_size_and_rotation():
    """At the world's resolution, every two shapes differ by at least 15 px of coverage, whatever their sizes and
    rotations (the closest pair, circle and pentagon, by 18 px)."""
    def coverage(shape, radius, rot):
        mask = np.asarray(W._shape_mask(shape, 16, 16, radius, rot), dtype=float) / 255
        return mask.reshape(32, 4, 32, 4).mean(axis=(1, 3))

    poses = [(r, a) for r in np.linspace(*W.RADIUS, 4) for a in np.linspace(-W.ROTATION, W.ROTATION, 3)]
    masks = {s: [coverage(s, r, a) for r, a in poses] for s in W.SHAPES}
    closest = min((min(np.abs(x - y).sum() for x in masks[a] for y in masks[b]), a, b)
                  for a, b in itertools.combinations(W.SHAPES, 2))
    assert closest[0] >= 15, closest


def test_make_dataset_labels_four_axes():
    x, y = W.make_dataset(30, seed=4)
    x2, y2 = W.make_dataset(30, seed=4)
    assert x.shape == (30, 32, 32, 3) and y.shape == (30, 4) and np.array_equal(x, x2) and np.array_equal(y, y2)
    assert all(y[:, j].max() < len(W.AXES[k]) for j, k in enumerate(W.KINDS)) and y.min() >= 0


# ----------------------------------------------------------------------------- captions and splits
def test_concept_tables():
    assert len(W.SHAPES) == 12 and len(W.COLOURS) == 6 and len(W.BACKGROUNDS) == 4 and len(W.STYLES) == 5
    assert set(W.SYNONYMS) == set(W.CONCEPT_KIND) and set(W.OBJECTS) == set(W.SHAPES)
    for concept, syn in W.SYNONYMS.items():
        assert syn["train"][0] == concept and len(syn["train"]) == 4 and len(syn["heldout"]) == 2
    for shape, objects in W.OBJECTS.items():
        assert len(objects["train"]) == 4 and len(objects["heldout"]) == 2, shape


def test_every_phrase_belongs_to_one_concept_and_no_object_names_a_shape():
    phrases = [(w, c) for c, s in W.SYNONYMS.items() for w in s["train"] + s["heldout"]]
    phrases += [(o, s) for s, split in W.OBJECTS.items() for o in split["train"] + split["heldout"]]
    words = [w for w, _ in phrases]
    assert len(words) == len(set(words)), [w for w in words if words.count(w) > 1]
    shape_words = [w for s in W.SHAPES for w in W.SYNONYMS[s]["train"] + W.SYNONYMS[s]["heldout"]]
    for obj in W.OBJECT_SHAPE:
        named = [w for w in shape_words if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", obj)]
        assert not named, (obj, named)


def test_no_heldout_phrase_is_reachable_from_training_captions():
    texts, idx = B.caption_table(seed=0, k_words=3, k_objects=2)
    assert W.heldout_phrases_in(texts) == []
    assert len(texts) == len(set(texts)) and "" in texts
    assert set(W.TRAIN_TEMPLATES).isdisjoint(W.HELDOUT_TEMPLATES)
    # every training object and every training word is in some caption
    joined = "\n".join(texts)
    for concept in W.CONCEPT_KIND:
        for w in W.training_words(concept):
            assert re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", joined), w
    rng = np.random.default_rng(0)
    for _ in range(40):
        train = W.caption("circle", "orange", "dotted", "hatched", rng, object_share=0.5)
        held = W.caption("circle", "orange", "dotted", "hatched", rng, heldout=True, object_share=0.5)
        assert W.heldout_phrases_in(train) == [], train
        found = {phrase for _, phrase in W.heldout_phrases_in(held)}
        assert found & set(W.HELDOUT_TEMPLATES) and len(found) >= 5, (held, found)  # template + 4 slots
        assert " a o" not in f" {train}" and " a a" not in f" {train}"  # article fix-up


def test_heldout_check_sees_open_slots_and_nesting():
    leaks = W.heldout_phrases_in({"contexts": ["a red {} on a plain background", "there is a red {}, hazy, over a plain surface"],
                                  "synonyms": {"circle": ["disk", "bottle cap"]}})
    assert {p for _, p in leaks} == {W.HELDOUT_TEMPLATES[1], "hazy", "bottle cap"}
    assert W.heldout_phrases_in("a red disc") == [("a red disc", "disc")]
    assert W.heldout_phrases_in(["a discus", "a blocky shape"]) == []  # whole words only


def test_caption_sampler_names_each_images_concepts():
    texts, idx = B.caption_table(seed=1, k_words=3, k_objects=2)
    gen = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.randint(0, len(W.AXES[k]), (3000,), generator=gen) for k in W.KINDS], 1)
    ids = B.sample_caption_ids(labels, idx, gen)
    words = {c: W.training_words(c) for c in W.CONCEPT_KIND}
    kinds = {"empty": 0, "object": 0}
    for label, i in zip(labels.tolist(), ids.tolist()):
        text = texts[i]
        if text == "":
            kinds["empty"] += 1
            continue
        named = [any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text) for w in words[W.AXES[k][j]])
                 for k, j in zip(W.KINDS, label)]
        assert named[0], (text, label)  # the shape, by a word or an object, is always named
        kinds["object"] += any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text) for o in W.OBJECTS[W.SHAPES[label[0]]]["train"])
        for k, ok in zip(W.KINDS[1:], named[1:]):  # a named axis is named right, an unnamed one not at all
            others = [w for c in W.AXES[k] for w in words[c]]
            assert ok or not any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text) for w in others), (text, k)
    assert abs(kinds["empty"] / 3000 - W.CAPTION_SHARES["empty"]) < 0.03
    assert abs(kinds["object"] / 3000 - W.OBJECT_SHARE * (1 - W.CAPTION_SHARES["empty"])) < 0.04


def test_no_preset_reaches_a_heldout_phrase(monkeypatch):
    """With world 2 as the bundled world, every method's shapes preset, for single concepts of each axis and for
    3 and 6 shapes at once, names no held-out synonym, object or template."""
    import veil.shapes
    from veil.methods.presets import preset_for
    from veil.registry import get_method, list_methods

    monkeypatch.setattr(veil.shapes, "world_version", lambda model="shapes": 2)
    concept_sets = [[c] for c in ("circle", "pentagon", "ring", "red", "dotted", "hatched", "soft-edged")]
    concept_sets += [list(W.SHAPES[:3]), list(W.SHAPES[3:9])]
    checked = 0
    for name in list_methods():
        cls = get_method(name)
        if "shapes" not in cls.model_presets:
            continue
        for concepts in concept_sets:
            settings = preset_for(cls, "shapes", concepts)
            assert W.heldout_phrases_in(settings) == [], (name, concepts)
            checked += 1
        if "contexts" in settings:  # the world-2 contexts, not world 1's
            assert any("{}" in c and "style" in c for c in preset_for(cls, "shapes", ["circle"])["contexts"])
    assert checked >= 5 * len(concept_sets)


# ----------------------------------------------------------------------------- prompt sets and tasks
def test_prompt_sets():
    canon = W.canonical_prompts(seeds=(0,))
    assert len(canon) == 360 and len({(r["shape"], r["colour"], r["style"]) for r in canon}) == 360
    for k in W.KINDS:  # each concept appears equally often (backgrounds: within one)
        counts = [sum(r[k] == v for r in canon) for v in W.AXES[k]]
        assert max(counts) - min(counts) <= (len(canon) // 60 if k == "background" else 0), (k, counts)
    implicit = W.implicit_prompts((0,), "train") + W.implicit_prompts((0,), "heldout")
    for r in implicit:
        assert r["object"] in W.OBJECTS[r["shape"]][r["split"]] and r["object"] in r["prompt"]
        assert not any(re.search(rf"(?<![\w-]){w}(?![\w-])", r["prompt"]) for w in W.SYNONYMS[r["shape"]]["train"])
    held = [r["prompt"] for r in implicit if r["split"] == "heldout"]
    assert len(held) == 12 * 2 * 8 and all(W.heldout_phrases_in(p) for p in held)
    assert W.heldout_phrases_in([r["prompt"] for r in implicit if r["split"] == "train"]) == []
    styles = W.style_prompts((0,))
    assert len(styles) == 5 * 12 * 3 and all(r["style"] and r["shape"] for r in styles)
    assert W.heldout_phrases_in([r["prompt"] for r in styles + canon + W.short_prompts((0,))]) == []


def test_world2_tasks_need_a_world2_model(tmp_path):
    import veil
    from veil.evaluation.shapes_tasks import task_rows
    from veil.evaluation.tasks import load_task

    (tmp_path / "w1" / "pipeline").mkdir(parents=True)
    (tmp_path / "w1" / "world.json").write_text(json.dumps({"version": 1}))
    world1 = str(tmp_path / "w1")
    with pytest.raises(veil.VeilError, match="needs shapes world 2"):
        task_rows("shapes_implicit", model=world1)
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "world.json").write_text(json.dumps({"version": 2}))
    model = str(tmp_path / "pipeline")
    assert veil.shapes.world_version(model) == 2 and veil.shapes.world_version(world1) == 1
    rows = load_task("shapes_implicit").rows(model=model, seeds=(0,))
    assert {r["split"] for r in rows} == {"train", "heldout"} and all(r["style"] or "{" not in r["prompt"] for r in rows)
    assert len(load_task("shapes_styles").rows(model=model, seeds=(0, 1))) == 2 * 180
    assert task_rows("shapes_concepts", (0,), model=model)[0]["prompt"] == "a filled red circle on a plain background"
    assert task_rows("shapes_concepts", (0,), model=world1)[0]["prompt"] == "a red circle on a plain background"
    (tmp_path / "paraphrase_prompts.csv").write_text("prompt,seed,shape,colour,background,style\na hazy red circle,3,circle,red,,soft-edged\n")
    assert task_rows("shapes_paraphrase", model=model) == [
        {"prompt": "a hazy red circle", "seed": 3, "shape": "circle", "colour": "red", "background": None, "style": "soft-edged"}]


# ----------------------------------------------------------------------------- classifier and concept rate
def test_classifier_heads_and_labels(tmp_path):
    from veil.shapes.classifier import ShapesClassifier, classify, load_classifier, save_classifier, world_heads

    torch.manual_seed(0)
    model = ShapesClassifier(heads=world_heads(2)).eval()
    out = model(torch.rand(3, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"shape": (3, 12), "colour": (3, 6), "background": (3, 4), "style": (3, 5)}
    save_classifier(model, tmp_path / "clf.safetensors")
    loaded = load_classifier(tmp_path / "clf.safetensors")
    x, _ = W.make_dataset(6, seed=1)
    labels = classify(x, loaded)
    assert labels == classify(x, model) and set(labels["style"]) <= set(W.STYLES) and len(labels["style"]) == 6
    cfg = json.loads((tmp_path / "clf.json").read_text())
    cfg["labels"]["style"] = ["filled", "inked"]
    (tmp_path / "clf.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no shapes world"):
        load_classifier(tmp_path / "clf.safetensors")


def test_concept_rate_reports_splits_and_refuses_a_missing_head():
    import veil
    from veil.evaluation.metrics import get_metric

    rows = [{"id": i, "prompt": p, "shape": "circle", "colour": None, "background": None, "style": None, "split": s}
            for i, (p, s) in enumerate([("a coin", "train"), ("a wheel", "train"), ("a cookie", "heldout")])]
    fixed = {"shape": ["circle", "square", "circle"], "colour": ["red"] * 3, "background": ["plain"] * 3, "style": ["filled"] * 3}
    metric = get_metric("concept_rate")(scorer=lambda images: fixed)
    metric.targets = ["circle"]
    metric.reset()
    metric.update(rows, [None] * 3)
    summary, _ = metric.compute()
    assert summary["rates"]["circle"] == pytest.approx(2 / 3)
    assert summary["splits"]["train"]["target_rate"] == 0.5 and summary["splits"]["heldout"]["target_rate"] == 1.0
    world1 = get_metric("concept_rate")(scorer=lambda images: {k: v for k, v in fixed.items() if k != "style"})
    world1.reset()
    with pytest.raises(veil.VeilError, match="no style head"):
        world1.update([dict(rows[0], style="hatched")], [None])


# ----------------------------------------------------------------------------- the build: slice and resume
def _args(tmp_path, **overrides):
    from veil.shapes.train import parse_args

    argv = ["--world", "2", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--threads", "1",
            "--n-train", "48", "--n-val", "16", "--n-roundtrip", "16", "--vae-steps", "4", "--vae-batch", "4",
            "--clf-steps", "4", "--clf-batch", "8", "--unet-steps", "4", "--unet-batch", "2", "--unet-warmup", "2",
            "--ckpt-minutes", "0", "--resume"]
    args = parse_args(argv)
    for k, v in overrides.items():
        setattr(args, k, v)
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    return args


class _Interrupt(Exception):
    pass


def _stop_at(monkeypatch, step):
    from veil.shapes import train

    original = train.ThreadTuner.record

    def record(self, s, dt):
        if s == step:
            raise _Interrupt
        original(self, s, dt)

    monkeypatch.setattr(train.ThreadTuner, "record", record)


def test_world2_defaults_and_workdir_guard(tmp_path):
    import veil
    from veil.shapes import train

    args = train.parse_args(["--world", "2"])
    assert args.unet_minutes is None and args.unet_steps > 1000 and args.n_train >= 30000  # step-planned, no clock
    assert train.parse_args([]).unet_minutes == 33.0  # world 1 keeps its wall-clock budget
    a = _args(tmp_path)
    train.check_workdir(a, tmp_path / "work")
    train.check_workdir(a, tmp_path / "work")  # the same build: resumable
    a.seed = 1
    with pytest.raises(veil.VeilError, match="holds another build"):
        train.check_workdir(a, tmp_path / "work")


def test_build_slice_vae_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from veil.shapes import train

    torch.set_num_threads(1)
    straight = _args(tmp_path / "a")
    xtr, ytr, xva, _ = train.stage_data(straight, tmp_path / "a" / "work", {})
    assert ytr.shape == (48, 4)
    vae_a = train.stage_vae(straight, tmp_path / "a" / "work", {}, xtr, xva)

    resumed = _args(tmp_path / "b")
    _stop_at(monkeypatch, 3)
    with pytest.raises(_Interrupt):
        train.stage_vae(resumed, tmp_path / "b" / "work", {}, xtr, xva)
    monkeypatch.undo()
    assert train.load_cache(tmp_path / "b" / "work" / "vae_ckpt.pt")["step"] == 2
    rec = {}
    vae_b = train.stage_vae(resumed, tmp_path / "b" / "work", rec, xtr, xva)
    assert rec["vae"]["steps"] == 4
    for (name, a), (_, b) in zip(vae_a.state_dict().items(), vae_b.state_dict().items()):
        assert torch.equal(a, b), name
    other = _args(tmp_path / "b", vae_lr=5e-4)
    (tmp_path / "b" / "work" / "vae_done.json").unlink()
    import veil

    with pytest.raises(veil.VeilError, match="other settings"):
        train.stage_vae(other, tmp_path / "b" / "work", {}, xtr, xva)


def test_build_slice_unet_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """The world-2 UNet stage (a tiny UNet in its place) on a caption table with stand-in embeddings."""
    from veil.shapes import train

    torch.set_num_threads(1)
    monkeypatch.setattr(train, "UNET2_CONFIG", dict(train.UNET2_CONFIG, block_out_channels=(32, 32, 32), attention_head_dim=2))
    texts, idx = B.caption_table(seed=0, k_words=1, k_objects=1)
    cap = {"texts": texts, "idx": idx, "emb": torch.randn(len(texts), 4, 384, generator=torch.Generator().manual_seed(0)).half()}
    x, y = W.make_dataset(16, seed=0)
    lat = {"mu": torch.randn(16, 4, 8, 8), "std": torch.full((16, 4, 8, 8), 0.1)}

    def weights(unet):
        return {k: v.clone() for k, v in unet.state_dict().items()}

    straight = weights(train.stage_unet(_args(tmp_path / "a"), tmp_path / "a" / "work", {}, y, lat, cap, 0.9))
    args = _args(tmp_path / "b")
    with monkeypatch.context() as m:
        _stop_at(m, 3)
        with pytest.raises(_Interrupt):
            train.stage_unet(args, tmp_path / "b" / "work", {}, y, lat, cap, 0.9)
    rec = {}
    resumed = weights(train.stage_unet(args, tmp_path / "b" / "work", rec, y, lat, cap, 0.9))
    assert rec["unet"]["steps"] == 4 and rec["unet"]["config"]["caption_mix"]["sts"] == W.CAPTION_SHARES["sts"]
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_build_folder_loads_as_a_model_with_its_own_classifier(tmp_path):
    """``--model`` may name a shapes build's output folder (or its pipeline/): MiniLM is injected, and a
    concept-rate task defaults to the build's classifier."""
    import shutil

    import veil
    from veil.evaluation.harness import _build_classifier
    from veil.evaluation.tasks import load_task
    from veil.shapes import PIPELINE_DIR

    shutil.copytree(PIPELINE_DIR, tmp_path / "pipeline")
    (tmp_path / "world.json").write_text(json.dumps({"version": 1}))
    for model in (tmp_path, tmp_path / "pipeline"):
        pipe = veil.load_pipeline(str(model))
        assert pipe.text_encoder.config.use_attention_mask is True and pipe.tokenizer.model_max_length == 32
    task = load_task("shapes_concepts")
    assert _build_classifier(task, str(tmp_path), None) == {"classifier": str(tmp_path / "classifier.safetensors")}
    assert _build_classifier(task, str(tmp_path), {"classifier": "mine.safetensors"}) == {"classifier": "mine.safetensors"}
    assert _build_classifier(task, "shapes", None) is None
    assert _build_classifier(load_task("i2p_nudity"), str(tmp_path), None) is None


def _stub_heavy_parts(monkeypatch):
    """A tiny UNet, stand-in caption states and stand-in samples (drawing thousands of images is the real build's
    job); the real everything else."""
    from veil.shapes import train

    monkeypatch.setattr(train, "UNET2_CONFIG", dict(train.UNET2_CONFIG, block_out_channels=(32, 32, 32), attention_head_dim=2))
    monkeypatch.setattr(train, "UNET_CONFIG", dict(train.UNET_CONFIG, block_out_channels=(32, 32, 32), attention_head_dim=2))
    monkeypatch.setattr(train, "encode_texts", lambda texts, tok, te: torch.randn(len(texts), 4, 384).half())
    monkeypatch.setattr(train, "generate", lambda pipe, rows, **kwargs: np.random.default_rng(len(rows)).integers(
        0, 256, (len(rows), 32, 32, 3), dtype=np.uint8))
    return train


def _slice_argv(tmp_path, world):
    return ["--world", str(world), "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--threads", "1",
            "--n-train", "48", "--n-val", "16", "--n-roundtrip", "16", "--vae-steps", "2", "--vae-batch", "4",
            "--clf-steps", "2", "--clf-batch", "8", "--unet-steps", "2", "--unet-batch", "2", "--unet-warmup", "2",
            "--captions-per-combo", "1", "--eval-seeds", "1", "--para-per-phrasing", "1", "--resume"]


def test_build_slice_end_to_end(tmp_path, monkeypatch):
    """``python -m veil.shapes.train --world 2`` through every stage on a tiny slice; a second run finds every
    stage done."""
    train = _stub_heavy_parts(monkeypatch)
    argv = _slice_argv(tmp_path, 2)
    rec = train.main(argv)
    out = tmp_path / "out"
    assert json.loads((out / "world.json").read_text())["version"] == 2
    assert json.loads((out / "classifier.json").read_text())["labels"]["style"] == list(W.STYLES)
    log = json.loads((out / "train_log.json").read_text())
    ev = log["stages"]["eval"]
    assert {"canonical", "train_synonyms", "styles", "short", "implicit", "heldout_implicit", "paraphrase_candidates"} <= set(ev)
    assert ev["canonical"]["n"] == 360 and ev["canonical"]["style"] is not None and set(ev["bars"]) >= {"met", "canonical_missed"}
    assert ev["sampler"] == {"scheduler": "DDIM", "steps": 25, "guidance_scale": 3.0}
    assert log["build_seconds"] > 0 and rec["stages"]["unet"]["steps"] == 2
    header = (out / "paraphrase_prompts.csv").read_text().splitlines()[0]
    assert header == "prompt,seed,shape,colour,background,style" and (out / "samples.png").is_file()
    assert (out / "pipeline" / "model_index.json").is_file() and not (out / "pipeline" / "text_encoder").exists()
    again = train.main(argv + ["--no-eval"])
    assert all(again["stages"][k].get("cached") for k in ("data", "vae", "latents", "classifier", "captions", "unet"))


def test_world1_build_slice_still_runs(tmp_path, monkeypatch):
    train = _stub_heavy_parts(monkeypatch)
    train.main(_slice_argv(tmp_path, 1))
    out = tmp_path / "out"
    assert json.loads((out / "world.json").read_text())["version"] == 1
    assert set(json.loads((out / "classifier.json").read_text())["labels"]) == {"shape", "colour", "background"}
    ev = json.loads((out / "train_log.json").read_text())["stages"]["eval"]
    assert ev["canonical"]["n"] == 120 and "style" not in ev["canonical"] and "bars" not in ev
    assert (out / "paraphrase_prompts.csv").read_text().splitlines()[0] == "prompt,seed,shape,colour,background"
