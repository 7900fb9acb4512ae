"""veil: hide and erase concepts in text-to-image diffusion models.

The public API::

    pipe = veil.load_pipeline("shapes")                    # or a local SD folder / hub id
    method = veil.get_method("esd")(concepts=["circle"])    # any registered method
    cost = veil.fit(method, pipe)                           # trains (every stage) or fits it
    veil.Artifact.from_method(method, pipe, cost).save("erased/")
    veil.load_artifact("erased/").attach(pipe)              # the concept is gone; .detach(pipe) restores
"""

__version__ = "0.1.0"

from .artifact import Artifact, load_artifact  # noqa: E402
from .errors import TrainingDiverged, VeilError  # noqa: E402
from .methods.kpop import keys  # noqa: E402  (veil.keys: the KPOP key file API)
from .methods.kpop.keys import Key, load_key_for, random_key_like, save_key  # noqa: E402
from .models import DEFAULT_MODEL, load_pipeline, model_fingerprint  # noqa: E402
from .registry import get_method, list_methods, register_method  # noqa: E402
from .training.loop import fit  # noqa: E402

__all__ = [
    "Artifact",
    "DEFAULT_MODEL",
    "Key",
    "TrainingDiverged",
    "VeilError",
    "get_method",
    "list_methods",
    "load_artifact",
    "load_key_for",
    "load_pipeline",
    "model_fingerprint",
    "random_key_like",
    "register_method",
    "save_key",
    "fit",
]
