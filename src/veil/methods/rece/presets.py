"""RECE's model presets (measured in bench/results; docs/methods/rece.md gives the reasons)."""

from ..uce.presets import MODEL_PRESETS as UCE_PRESETS

MODEL_PRESETS = {
    # UCE's shapes preset (every token row sent to another concept of its kind, every other concept preserved),
    # then the authors' object-erasure rounds: one, rho 1e-3 (their nudity run's three rounds at rho 0.1 cost
    # circle's synonyms and other concepts' backgrounds here).
    # The bare phrasings, not UCE's caption sample: with the captions the round's derived embedding took square
    # down to 25 % of its base when circle was erased.
    "shapes": {**UCE_PRESETS["shapes"], "templates": ["{}"], "epochs": 1, "embedding_regularization": 1e-3},
}
