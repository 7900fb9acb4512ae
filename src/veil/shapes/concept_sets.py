"""Concept-dependent preset fields on the shapes world: a concept's guide, its neighbours and its captions.

Each function takes the concepts a method acts on and returns one field's value; the methods' model
presets (``veil/methods/<method>/presets.py``) name them, and :func:`veil.methods.presets.preset_for`
calls them with the run's concepts. They read the bundled model's shapes world (:func:`veil.shapes.world_data`),
and only its training phrasings: no held-out word, object or template (``veil.shapes.world2.heldout_phrases_in``
checks a preset's values).
"""

import itertools


def _world():
    from . import world_data

    return world_data()


def anchor(concepts):
    """Another concept of the first one's kind (circle -> square): what the concept is drawn as instead."""
    W = _world()
    kind = W.CONCEPT_KIND.get(concepts[0])
    return next((c for c in W.AXES[kind] if c not in concepts), "") if kind else ""


def all_but_concepts_and_anchor(concepts):
    """Every shapes-world concept except the concepts and their :func:`anchor`."""
    return [c for c in _world().CONCEPT_KIND if c not in concepts and c != anchor(concepts)]


def same_kind_others(concepts):
    """The other concepts of the concepts' kind (circle -> square, triangle, star, cross)."""
    W = _world()
    kinds = {W.CONCEPT_KIND.get(c) for c in concepts} - {None}
    return [c for kind in sorted(kinds) for c in W.AXES[kind] if c not in concepts]


def contexts(concepts):
    """The training captions with the concepts' slot left open ('a red {} on a dotted background'): every
    template × value of the other axes; none when the concepts are of different kinds."""
    W = _world()
    kinds = {W.CONCEPT_KIND.get(c) for c in concepts}
    if len(kinds) != 1 or None in kinds:
        return []
    kind = kinds.pop()
    others = [k for k in W.AXES if k != kind]
    return [W.fill(t, **{W.SLOTS[kind]: "{}"}, **{W.SLOTS[k]: v for k, v in zip(others, values)})
            for t in W.TRAIN_TEMPLATES for values in itertools.product(*(W.AXES[k] for k in others))]


def contexts_and_partials(concepts):
    """:func:`contexts` plus the partial captions the model was trained on ('a red {}', 'a {} on a dotted
    background', 'a {}') and the bare word ('{}'), each repeated so that each kind makes up the share of the
    contexts that it had of the model's training captions (``CAPTION_SHARES``); only the full captions when
    the concepts are not all shapes."""
    W = _world()
    full = contexts(concepts)
    if not full or {W.CONCEPT_KIND.get(c) for c in concepts} != {"shape"}:
        return full
    share_full = 1 - sum(W.CAPTION_SHARES.values())
    partials = []
    for name, template in W.PARTIAL_TEMPLATES.items():
        axes = [k for k in W.KINDS if k != "shape" and "{" + W.SLOTS[k] + "}" in template]
        fills = [{W.SLOTS[k]: v for k, v in zip(axes, values)} for values in itertools.product(*(W.AXES[k] for k in axes))]
        repeats = max(1, round(W.CAPTION_SHARES[name] / share_full * len(full) / len(fills)))
        partials += [W.fill(template, s="{}", **f) for f in fills] * repeats
    # The bare word was never a caption, but it is what people type: as often as 'a {}'.
    return full + partials + ["{}"] * partials.count("a {}")


def caption_sample(concepts):
    """The bare word, ``'a {}'`` and one training caption for each combination of the other axes' values (the
    templates in turn): a compact :func:`contexts` for an edit whose cost grows with its prompts (UCE's)."""
    W = _world()
    full = contexts(concepts)
    if not full:
        return ["{}"]
    per_template = len(full) // len(W.TRAIN_TEMPLATES)
    sample = [full[(i % len(W.TRAIN_TEMPLATES)) * per_template + i] for i in range(per_template)]
    return ["{}", "a {}"] + sample


def captions_without(concepts):
    """The model's own training captions ('a red square on a dotted background', every template × shape × colour ×
    background) that name none of the concepts: what a user of the shapes world would list as prompts to keep."""
    W = _world()
    combos = [dict(zip(W.AXES, values)) for values in itertools.product(*W.AXES.values())]
    return [W.fill(t, **{W.SLOTS[k]: v for k, v in combo.items()})
            for combo in combos if not set(combo.values()) & set(concepts) for t in W.TRAIN_TEMPLATES]

