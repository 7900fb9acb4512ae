"""Model presets: the settings that make a method work at a base model's scale.

Each method keeps its own in ``veil/methods/<method>/presets.py`` (its class's ``model_presets``); this
looks them up. ``veil erase``, ``veil hide``, ``veil bench`` and ``veil demo`` start from them, and a
config file, ``--set`` or a flag overrides any field.
"""

import dataclasses

from ..registry import get_method


def preset_for(method, model_name, concepts=()):
    """Settings for ``method`` (a registered name or class) on ``model_name`` (empty: the method's defaults).

    A preset field that is a function is called with the concepts. On the shapes world a method class also
    gets each concept's training synonyms (if its config takes ``synonyms``) and, when its preset turns
    ``retain_weight`` on, every other shapes-world concept as ``retain_concepts``.

    Args:
        method: the method's registered name, or its class (needed for the synonyms and retain concepts).
        model_name: ``"shapes"``, ``"tiny"``, a folder or a hub id; only named models have presets.
        concepts: the concepts the method will act on.
    """
    cls = get_method(method) if isinstance(method, str) else method
    preset = cls.model_presets.get(str(model_name), {})
    settings = {k: v(list(concepts)) if callable(v) else v for k, v in preset.items() if concepts or not callable(v)}
    if str(model_name) != "shapes" or isinstance(method, str) or not concepts:
        return settings
    from ..shapes import world_data

    world = world_data()  # the bundled model's shapes world: its training words only, never its held-out ones
    CONCEPT_KIND, SYNONYMS = world.CONCEPT_KIND, world.SYNONYMS
    fields = {f.name for f in dataclasses.fields(method.config_class)}
    known = [c for c in concepts if c in CONCEPT_KIND]
    if "synonyms" in fields and known and "synonyms" not in settings:
        settings["synonyms"] = {c: [p for p in SYNONYMS[c]["train"] if p != c] for c in known}
    if settings.get("retain_weight") and "retain_concepts" in fields and known:
        # The other concepts as bare words: whole captions share their colour and background words with the
        # concept's own captions, and preserving those held the concept back.
        settings["retain_concepts"] = [c for c in CONCEPT_KIND if c not in concepts]
    return settings
