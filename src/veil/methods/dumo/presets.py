"""DuMo's model presets (measured in bench/results; the method's page in docs/methods gives the reasons)."""

from ...shapes import concept_sets

MODEL_PRESETS = {
    # Stage 1 in the model's captions anchored at another shape, keeping the concept's neighbours; beyond the
    # release (which never skips), the eraser runs only when the gate reaches 0.7 or one of the prompt's tokens
    # matches the concept.
    "shapes": {"max_train_steps": 400, "learning_rate": 2e-3, "ddim_steps": 25, "tlmo_max_train_steps": 60,
               "tlmo_learning_rate": 1e-2, "preserve_weight": 0.03, "contexts": concept_sets.contexts,
               "context_guide": concept_sets.anchor, "context_probability": 1.0, "epr_preserve_weight": 1.0,
               "epr_preserve_concepts": concept_sets.same_kind_others, "gate_threshold": 0.7, "skip_on": "either",
               "token_skip_threshold": 0.6},
}
