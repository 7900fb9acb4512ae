"""Per-model settings that make each method work at the scale of a given base model.

The shapes world is ~100× smaller than SD 1.x and trains in minutes, so the papers' learning rates
(tuned for SD) barely move it. Each entry is measured; the bench and the demo use them.
"""

PRESETS = {
    "shapes": {
        # ESD-x, 4 samples per DDIM trajectory; measured in bench/results/shapes.
        "esd": {"max_train_steps": 200, "learning_rate": 5e-4},
    },
}


def preset_for(method_name, model_name):
    """Settings for ``method_name`` on ``model_name`` (empty: the method's own defaults)."""
    return dict(PRESETS.get(str(model_name), {}).get(method_name, {}))
