"""RECE's model presets (measured in bench/results/new-methods; docs/methods/rece.md gives the reasons)."""

from ..uce.presets import MODEL_PRESETS as UCE_PRESETS

MODEL_PRESETS = {
    # UCE's shapes preset (every token row sent to another concept of its kind, every other concept preserved),
    # then RECE's rounds.
    "shapes": dict(UCE_PRESETS["shapes"]),
}
