"""KPOP's model presets (measured in bench/results; the method's page in docs/methods gives the reasons)."""

from ...shapes import concept_sets

MODEL_PRESETS = {
    # The key on every cross-attention layer, the UNet's to_k and to_v trained; each step hides the concept in one
    # of the model's own captions anchored at another shape; word decoys of the concept's kind; then key-only steps.
    # This key trains from E(c)[:m] plus secret noise, so a key trained again from the public settings unlocks part
    # of the artifact; the untrained random key of the paper and tuned presets is not yet measured on every row here.
    "shapes": {"preset": "tuned", "layers": "all", "train_method": "xattn_kv", "max_train_steps": 500, "ddim_steps": 20,
               "learning_rate": 2e-3, "key_start": "concept", "key_learning_rate": 2e-2, "recover_weight": 1.0, "retain_weight": 2.0,
               "key_retain_weight": 0.0, "decoy_weight": 1.0, "word_decoy_probability": 0.5,
               "decoy_words": concept_sets.same_kind_others, "key_init_noise": 1.0, "key_update": "joint",
               "trajectory_batch": 2, "key_finish_steps": 50, "contexts": concept_sets.contexts_and_partials,
               "context_probability": 1.0, "context_guide": concept_sets.anchor,
               "context_retain_concepts": concept_sets.same_kind_others},
}
