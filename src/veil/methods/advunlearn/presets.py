"""AdvUnlearn's model presets (measured in bench/results/advunlearn; docs/methods/advunlearn.md gives the reasons)."""

from ...shapes import concept_sets

MODEL_PRESETS = {
    # The concept (or a training synonym) unlearned in the model's own captions, anchored at another concept of its
    # kind, with and without the adversarial token; captions naming none of the concepts and the empty prompt kept.
    "shapes": {"max_train_steps": 200, "learning_rate": 2.5e-4, "ddim_steps": 20, "samples_per_trajectory": 2,
               "trajectory_batch": 4, "warmup_steps": 50, "attack_steps": 3, "attack_learning_rate": 1e-2,
               "attack_init": "latest", "plain_weight": 1.0, "unconditional_weight": 1.0,
               "retain_prompts": concept_sets.captions_without, "retain_weight": 5.0, "retain_batch": 2,
               "contexts": concept_sets.contexts_and_partials, "context_probability": 1.0,
               "context_guide": concept_sets.anchor},
}
