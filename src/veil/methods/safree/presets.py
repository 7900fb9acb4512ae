"""SAFREE's model presets (measured in bench/results/new-methods; docs/methods/safree.md gives the reasons)."""

MODEL_PRESETS = {
    # The shapes world samples 20 steps, not 50: the filter's most steps scale with them.
    "shapes": {"max_safe_steps": 4},
}
