"""RECE's model presets (measured in bench/results/new-methods; docs/methods/rece.md gives the reasons)."""

from ...shapes import concept_sets

MODEL_PRESETS = {
    # UCE's shapes preset (the concept sent to another of its kind, every other concept preserved), then RECE's rounds.
    "shapes": {"guide": concept_sets.anchor, "preserve_concepts": concept_sets.all_but_concepts_and_anchor},
}
