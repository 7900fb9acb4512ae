"""Concept-dependent preset fields on the shapes world: a concept's guide, its neighbours and its captions.

Each function takes the concepts a method acts on and returns one field's value; the methods' model
presets (``veil/methods/<method>/presets.py``) name them, and :func:`veil.methods.presets.preset_for`
calls them with the run's concepts.
"""

import itertools

from .data import AXES, CAPTION_SHARES, CONCEPT_KIND, PARTIAL_TEMPLATES, TRAIN_TEMPLATES, fill


def anchor(concepts):
    """Another concept of the first one's kind (circle -> square): what the concept is drawn as instead."""
    kind = CONCEPT_KIND.get(concepts[0])
    return next((c for c in AXES[kind] if c not in concepts), "") if kind else ""


def all_but_concepts_and_anchor(concepts):
    """Every shapes-world concept except the concepts and their :func:`anchor`."""
    return [c for c in CONCEPT_KIND if c not in concepts and c != anchor(concepts)]


def same_kind_others(concepts):
    """The other concepts of the concepts' kind (circle -> square, triangle, star, cross)."""
    kinds = {CONCEPT_KIND.get(c) for c in concepts} - {None}
    return [c for kind in sorted(kinds) for c in AXES[kind] if c not in concepts]


def contexts(concepts):
    """The training captions with the concepts' slot left open ('a red {} on a dotted background'): every
    template × value of the other two axes; none when the concepts are of different kinds."""
    kinds = {CONCEPT_KIND.get(c) for c in concepts}
    if len(kinds) != 1 or None in kinds:
        return []
    kind = kinds.pop()
    slot = {"shape": "s", "colour": "c", "background": "b"}
    others = [k for k in AXES if k != kind]
    return [fill(t, **{slot[kind]: "{}", slot[others[0]]: a, slot[others[1]]: b})
            for t in TRAIN_TEMPLATES for a in AXES[others[0]] for b in AXES[others[1]]]


def contexts_and_partials(concepts):
    """:func:`contexts` plus the partial captions the model was trained on ('a red {}', 'a {} on a dotted
    background', 'a {}') and the bare word ('{}'), each repeated so that each kind makes up the share of the
    contexts that it had of the model's training captions (``CAPTION_SHARES``); only the full captions when
    the concepts are not all shapes."""
    full = contexts(concepts)
    if not full or {CONCEPT_KIND.get(c) for c in concepts} != {"shape"}:
        return full
    share_full = 1 - sum(CAPTION_SHARES.values())
    partials = []
    for name, fills in (("cs", [dict(c=c) for c in AXES["colour"]]), ("sb", [dict(b=b) for b in AXES["background"]]), ("s", [{}])):
        repeats = max(1, round(CAPTION_SHARES[name] / share_full * len(full) / len(fills)))
        partials += [fill(PARTIAL_TEMPLATES[name], s="{}", **f) for f in fills] * repeats
    # The bare word was never a caption, but it is what people type: as often as 'a {}'.
    return full + partials + ["{}"] * partials.count("a {}")


def captions_without(concepts):
    """The model's own training captions ('a red square on a dotted background', every template × shape × colour ×
    background) that name none of the concepts: what a user of the shapes world would list as prompts to keep."""
    slot = {"shape": "s", "colour": "c", "background": "b"}
    combos = [dict(zip(AXES, values)) for values in itertools.product(*AXES.values())]
    return [fill(t, **{slot[k]: v for k, v in combo.items()})
            for combo in combos if not set(combo.values()) & set(concepts) for t in TRAIN_TEMPLATES]

