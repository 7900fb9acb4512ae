"""AdvUnlearn's model presets (measured in bench/results/advunlearn; docs/methods/advunlearn.md gives the reasons)."""

from ...shapes import concept_sets

MODEL_PRESETS = {
    # The model's own captions: the concept (or a training synonym) put in them to unlearn, and captions that name
    # none of the concepts to keep.
    "shapes": {"max_train_steps": 200, "learning_rate": 1e-4, "ddim_steps": 20, "samples_per_trajectory": 2,
               "trajectory_batch": 4, "attack_steps": 3, "attack_learning_rate": 1e-2, "warmup_steps": 50,
               "retain_batch": 2, "retain_weight": 1.0, "retain_prompts": concept_sets.captions_without,
               "contexts": concept_sets.contexts_and_partials, "context_probability": 0.75},
}
