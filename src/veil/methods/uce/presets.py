"""UCE's model presets (measured in bench/results; the method's page in docs/methods gives the reasons)."""

from ...shapes import concept_sets

MODEL_PRESETS = {
    # The concept sent to another concept of its kind (the empty guide keeps it), every other concept preserved.
    "shapes": {"guide": concept_sets.anchor, "preserve_concepts": concept_sets.all_but_concepts_and_anchor},
}
