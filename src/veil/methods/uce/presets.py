"""UCE's model presets (measured in bench/results; the method's page in docs/methods gives the reasons)."""

from ...shapes import concept_sets

MODEL_PRESETS = {
    # veil's variant: every token state sent position by position to another concept of its kind's (the empty
    # guide keeps it), lambda 0.1, every other concept preserved, the phrasings in a sample of the model's own
    # captions; paper mode against it: bench/results/uce/paper-mode.
    "shapes": {"guide": concept_sets.anchor, "preserve_concepts": concept_sets.all_but_concepts_and_anchor,
               "token_selection": "all", "regularization": 0.1, "templates": concept_sets.caption_sample},
}
