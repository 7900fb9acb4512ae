"""RECE's model presets (measured in bench/results; docs/methods/rece.md gives the reasons)."""

from ..uce.presets import MODEL_PRESETS as UCE_PRESETS

MODEL_PRESETS = {
    # UCE's shapes preset (every token row sent to another concept of its kind, every other concept preserved),
    # then the authors' object-erasure rounds: one, rho 1e-3 (their nudity run's three rounds at rho 0.1 cost
    # circle's synonyms and other concepts' backgrounds here).
    "shapes": {**UCE_PRESETS["shapes"], "epochs": 1, "embedding_regularization": 1e-3},
}
