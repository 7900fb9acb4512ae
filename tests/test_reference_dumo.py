"""veil's DuMo paper mode against noise predictions made once by the authors' release (bench/reference/dumo/).

The release's own DuMo class and vendored diffusers 0.27.2 loaded veil's authors-layout export of a seeded EPR
on the shapes model and predicted the noise for a fixed latent, timesteps and prompts, as its sampling scripts do.
"""

import importlib.util
import json
import os

import pytest
import torch
from safetensors import safe_open

import veil
from veil.methods.dumo import DuMo
from veil.methods.presets import preset_for

FOLDER = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "reference", "dumo")
TOLERANCE = 1e-5  # relative: |veil - release| / |release| (Frobenius norms)


def _script():
    """The script that made the fixture: its seeded EPR and its inputs are rebuilt here the same way."""
    spec = importlib.util.spec_from_file_location("dumo_make_reference", os.path.join(FOLDER, "make_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setting():
    script = _script()
    with safe_open(script.FIXTURE, framework="pt") as handle:
        reference = {k: handle.get_tensor(k) for k in handle.keys()}
        meta = json.loads(handle.metadata()["reference"])
    pipe = veil.load_pipeline("shapes")
    return script, reference, meta, pipe


def _relative_difference(ours, theirs):
    return float((ours.double() - theirs.double()).norm() / theirs.double().norm())


def _predictions(setting, **config):
    """veil's noise predictions for every prompt and timestep of the fixture, ``config`` on top of the defaults."""
    script, _, meta, pipe = setting
    method = DuMo(concepts=[meta["concept"]], **config)
    method.attach(pipe)
    try:
        script.perturb(method)
        data = script.inputs(pipe)  # encoded while attached: the gate learns each prompt's tokens
        latents = torch.cat([data["latent"]] * 2)
        out = {}
        with torch.no_grad():
            for p in range(len(meta["prompts"])):
                context = torch.cat([data["uncond"], data["prompts"][p : p + 1]])
                for t in meta["timesteps"]:
                    out[p, t] = pipe.unet(latents, t, encoder_hidden_states=context).sample
        return out, method
    finally:
        method.detach(pipe)


def test_the_release_loads_veils_export_without_missing_or_unexpected_keys(setting):
    _, _, meta, _ = setting
    assert meta["missing_keys"] == [] and meta["unexpected_keys"] == [] and meta["diffusers"] == "0.27.2"


def test_paper_mode_reproduces_the_release(setting):
    _, reference, meta, _ = setting
    ours, method = _predictions(setting)
    assert method.stats["epr_skipped"] == 0  # the release never skips
    for (p, t), prediction in ours.items():
        theirs = reference[f"release/{p}/{t}"]
        # The eraser moves the prediction well beyond the tolerance, so agreeing is about the eraser.
        assert _relative_difference(reference[f"original/{p}/{t}"], theirs) > 100 * TOLERANCE
        assert _relative_difference(prediction, theirs) < TOLERANCE, (meta["prompts"][p], t)


def test_nudity_path_reproduces_the_release_nudity_script(setting):
    _, reference, _, _ = setting
    ours, _ = _predictions(setting, gate=False, apply_time_scale=False)
    for (p, t), prediction in ours.items():
        assert _relative_difference(prediction, reference[f"nudity_script/{p}/{t}"]) < TOLERANCE


def test_the_shapes_preset_skips_where_the_release_scales(setting):
    """veil's gate threshold / skip (the shapes preset) leaves a square prompt as the original draws it; the release
    applies the gate's multiplier (0.595) to the eraser instead."""
    _, reference, meta, _ = setting
    skips = {k: v for k, v in preset_for("dumo", "shapes").items() if k in ("gate_threshold", "skip_on", "token_skip_threshold")}
    ours, _ = _predictions(setting, **skips)
    square = meta["prompts"].index("a blue square on a dotted background")
    assert 0.5 < meta["multipliers"][square] < 0.7
    for t in meta["timesteps"]:
        assert _relative_difference(ours[square, t], reference[f"original/{square}/{t}"]) < TOLERANCE
        assert _relative_difference(ours[square, t], reference[f"release/{square}/{t}"]) > 100 * TOLERANCE
