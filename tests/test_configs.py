"""Every example config under configs/ is a valid config of the method its file name starts with."""

import pathlib

import pytest

from veil.cli.common import method_config
from veil.registry import get_method

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    method_cls = get_method(path.name.split("_")[0])
    config = method_config(method_cls, ["circle"], str(path))
    assert config.concepts == ["circle"]


def test_there_are_example_configs():
    assert len(CONFIGS) >= 4


def test_numbers_in_yaml_exponent_form_are_numbers(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as text; a config file or --set must still mean the number.
    path = tmp_path / "esd_exp.yaml"
    path.write_text("learning_rate: 1e-3\nmax_train_steps: 2e2\n")
    config = method_config(get_method("esd"), ["circle"], str(path), ["negative_guidance=2e0"])
    assert config.learning_rate == 1e-3 and config.max_train_steps == 200 and config.negative_guidance == 2.0


def test_the_model_preset_sits_under_what_the_user_gives():
    kpop = get_method("kpop")
    shapes = method_config(kpop, ["circle"], model="shapes")
    assert shapes.synonyms["circle"] and "circle" not in shapes.synonyms["circle"]  # the shapes world's training synonyms
    tiny = method_config(kpop, ["circle"], model="tiny")
    assert tiny.learning_rate == 1e-5 and tiny.synonyms == {}  # no preset: the paper's settings
    overridden = method_config(kpop, ["circle"], settings=["learning_rate=3e-4"], model="shapes")
    assert overridden.learning_rate == 3e-4
    # Naming a method preset keeps that preset's numbers; the model only adds its concept lists.
    paper = method_config(kpop, ["circle"], settings=["preset=paper"], model="shapes")
    assert paper.learning_rate == 1e-5 and paper.synonyms == shapes.synonyms


def test_shapes_contexts_with_partials_keep_the_models_caption_mix():
    from collections import Counter

    from veil.shapes.concept_sets import contexts as _contexts
    from veil.shapes.concept_sets import contexts_and_partials as _contexts_and_partials
    from veil.shapes import world_data

    CAPTION_SHARES, COLOURS = world_data().CAPTION_SHARES, world_data().COLOURS  # the bundled model's world

    full, mixed = _contexts(["circle"]), _contexts_and_partials(["circle"])
    assert mixed[: len(full)] == full and all(c.count("{}") == 1 for c in mixed)
    partial = Counter(mixed[len(full):])
    assert partial["{}"] == partial["a {}"]  # the bare word, as often as 'a {}'
    kinds = {"cs": sum(n for c, n in partial.items() if c.split()[1:2] and c.split()[1] in COLOURS),
             "sb": sum(n for c, n in partial.items() if c.endswith("background")), "s": partial["a {}"]}
    for kind, count in kinds.items():  # each kind's share against the full captions is the model's training share
        assert count / len(full) == pytest.approx(CAPTION_SHARES[kind] / (1 - sum(CAPTION_SHARES.values())), rel=0.2)
    assert "an orange {}" in partial and _contexts_and_partials(["red"]) == _contexts(["red"])  # colours: full captions only


def test_retired_kpop_options_load_only_at_their_off_value():
    import veil

    kpop = get_method("kpop")
    saved = kpop.config_class(concepts=["circle"]).to_dict() | {"shifted_decoy_probability": 0.0, "rival_decoy_probability": 0.0}
    assert kpop.config_class.from_dict(saved) == kpop.config_class(concepts=["circle"])  # a config saved with them off
    assert method_config(kpop, ["circle"], settings=["retain_trajectory_probability=0"]).concepts == ["circle"]
    with pytest.raises(veil.VeilError, match="no longer has 'rival_decoy_probability'"):
        kpop.config_class.from_dict(saved | {"rival_decoy_probability": 0.25})
    with pytest.raises(veil.VeilError, match="no longer has 'retain_trajectory_probability'"):
        method_config(kpop, ["circle"], settings=["retain_trajectory_probability=0.5"])


def test_model_presets_sit_with_each_method_and_fill_the_concepts_fields():
    from veil.methods.presets import preset_for

    for name in ("esd", "kpop", "dumo", "uce"):
        assert get_method(name).model_presets["shapes"], name
    assert preset_for("sld", "shapes", ["circle"]) == {} and preset_for("esd", "tiny", ["circle"]) == {}
    uce = preset_for(get_method("uce"), "shapes", ["circle"])
    assert uce["guide"] == "square" and "circle" not in uce["preserve_concepts"] and "square" not in uce["preserve_concepts"]
    dumo = preset_for(get_method("dumo"), "shapes", ["circle"])
    from veil.shapes import world_data

    others = [s for s in world_data().SHAPES if s != "circle"]  # the bundled world's other shapes
    assert dumo["epr_preserve_concepts"] == others and dumo["synonyms"]["circle"]
    assert preset_for("dumo", "shapes")["max_train_steps"] == 400 and "contexts" not in preset_for("dumo", "shapes")


def test_every_method_setting_has_a_one_line_help():
    from veil.registry import list_methods

    for name in list_methods():
        for field, text in get_method(name).config_class.help().items():
            assert text and "\n" not in text and len(text) <= 100, (name, field, text)


@pytest.mark.parametrize("method,field,text,value", [
    ("esd", "learning_rate", "1e-4", 1e-4),
    ("esd", "learning_rate", "3.5E-5", 3.5e-5),
    ("uce", "preserve_scale", "1e-4", 1e-4),  # Optional[float]: read as text by YAML 1.1 before
    ("uce", "preserve_scale", "2.5", 2.5),
    ("esd", "max_train_steps", "1e2", 100),
])
def test_set_parses_numbers_for_number_fields(method, field, text, value):
    config = method_config(get_method(method), ["circle"], settings=[f"{field}={text}"])
    assert getattr(config, field) == value and isinstance(getattr(config, field), type(value))


def test_set_numbers_in_lists_and_refusals():
    from veil.attacks.ring_a_bell import RingABellConfig
    from veil.errors import VeilError

    assert RingABellConfig.from_dict({"strengths": ["1e0", 2]}).strengths == [1.0, 2]
    with pytest.raises(VeilError, match="preserve_scale must be a number, got 'lots'"):
        method_config(get_method("uce"), ["circle"], settings=["preserve_scale=lots"])
    with pytest.raises(VeilError, match="must be a whole number"):
        method_config(get_method("esd"), ["circle"], settings=["max_train_steps=1e-4"])
