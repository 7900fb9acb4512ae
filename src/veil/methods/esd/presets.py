"""ESD's model presets (measured in bench/results; the method's page in docs/methods gives the reasons)."""

MODEL_PRESETS = {
    "shapes": {"max_train_steps": 200, "learning_rate": 5e-4},
}
