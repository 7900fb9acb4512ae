"""MACE's model presets (measured in bench/results; the method's page in docs/methods gives the reasons)."""

from ...shapes import concept_sets

MODEL_PRESETS = {
    # UCE's shapes-world guide and preserve set; the renderer's mask is the region, and the tiny UNet needs a
    # larger step (1e-4: at 1e-3 the circle LoRA brought circles back) and a looser ridge than SD's.
    "shapes": {
        "guide": concept_sets.anchor,
        "preserve_concepts": concept_sets.all_but_concepts_and_anchor,
        "preserve_scale": 1.0,
        "regularization": 0.1,
        "templates": concept_sets.caption_sample,
        "region": "renderer",
        "learning_rate": 1e-4,
        "max_train_steps": 100,
        "images_per_concept": 16,
    },
}
