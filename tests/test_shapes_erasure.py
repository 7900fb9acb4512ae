"""On the bundled shapes world: short ESD, KPOP and DuMo runs act on their target and spare the rest."""

import pytest
import torch

import veil
from veil.evaluation.concept_rate import evaluate_prompts
from veil.shapes import world_data
from veil.shapes.classifier import classify

W = world_data()  # the bundled model's shapes world

KPOP_STEPS = 80
DUMO_STEPS = 80


@pytest.fixture(scope="module")
def shapes_pipe():
    return veil.load_pipeline("shapes")


def _rows(shape, count=12):
    rows = [r for r in W.canonical_prompts(seeds=(0,)) if r["shape"] == shape]
    return rows[::max(1, len(rows) // count)][:count]


def _rate(pipe, shape):
    return evaluate_prompts(pipe, _rows(shape), classify, num_inference_steps=10)["rates"][shape]


def test_short_esd_run_erases_circle_and_spares_square(shapes_pipe):
    base_circle, base_square = _rate(shapes_pipe, "circle"), _rate(shapes_pipe, "square")
    assert base_circle >= 0.9 and base_square >= 0.9
    method = veil.get_method("esd")(concepts=["circle"], max_train_steps=30, learning_rate=5e-4, ddim_steps=10)
    veil.fit(method, shapes_pipe, progress=False)
    try:
        circle, square = _rate(shapes_pipe, "circle"), _rate(shapes_pipe, "square")
    finally:
        method.detach(shapes_pipe)
    assert circle <= base_circle - 0.5, (base_circle, circle)
    assert square >= 0.8 * base_square, (base_square, square)


def test_short_kpop_run_hides_circle_and_only_its_key_brings_it_back(shapes_pipe):
    from veil.methods.kpop.keys import random_key_like
    from veil.methods.kpop import KPOP
    from veil.methods.presets import preset_for

    settings = preset_for(KPOP, "shapes", ["circle"]) | {"max_train_steps": KPOP_STEPS, "ddim_steps": 10}
    method = KPOP(KPOP.config_class(concepts=["circle"], **settings))
    veil.fit(method, shapes_pipe, progress=False)
    try:
        public, square = _rate(shapes_pipe, "circle"), _rate(shapes_pipe, "square")
        with method.unlocked(shapes_pipe):
            unlocked = _rate(shapes_pipe, "circle")
        with method.unlocked(shapes_pipe, random_key_like(method.key, torch.Generator().manual_seed(1))):
            guessed = _rate(shapes_pipe, "circle")
    finally:
        method.detach(shapes_pipe)
    assert public <= 0.5 and square >= 0.8, (public, square)
    assert unlocked >= 0.8 and guessed <= 0.5, (unlocked, guessed)


def test_short_dumo_run_erases_square_and_keeps_its_colours_and_the_other_shapes(shapes_pipe):
    from veil.methods.dumo import DuMo
    from veil.methods.presets import preset_for

    def colours_and_square():
        rows = _rows("square")
        rates = evaluate_prompts(shapes_pipe, rows, classify, num_inference_steps=10)["rates"]
        colours = sorted({r["colour"] for r in rows})  # the colours these rows name
        return sum(rates[c] for c in colours) / len(colours), rates["square"]

    # Stage 1 alone, shortened: captions anchored at the same caption with a circle (the preset's contexts).
    settings = preset_for(DuMo, "shapes", ["square"]) | {"max_train_steps": DUMO_STEPS, "ddim_steps": 10, "tlmo_max_train_steps": 0}
    method = DuMo(DuMo.config_class(concepts=["square"], **settings))
    base_colours, base_square = colours_and_square()
    veil.fit(method, shapes_pipe, progress=False)
    try:
        colours, square = colours_and_square()
        triangle = _rate(shapes_pipe, "triangle")
    finally:
        method.detach(shapes_pipe)
    assert base_square >= 0.9 and square <= 0.5 and triangle >= 0.8, (base_square, square, triangle)
    assert colours >= base_colours - 0.1, (base_colours, colours)  # the erased squares keep their colour


@pytest.mark.slow
def test_esd_shapes_preset_whole_erases_circle_and_keeps_square(shapes_pipe):
    """The ESD preset as `veil erase` runs it on the shapes world (minutes on a CPU; opt in with -m slow)."""
    from veil.methods.esd import ESD
    from veil.methods.presets import preset_for

    method = ESD(ESD.config_class(concepts=["circle"], **preset_for(ESD, "shapes", ["circle"])))
    veil.fit(method, shapes_pipe, progress=False)
    try:
        circle, square = _rate(shapes_pipe, "circle"), _rate(shapes_pipe, "square")
    finally:
        method.detach(shapes_pipe)
    assert circle <= 0.1 and square >= 0.9, (circle, square)
