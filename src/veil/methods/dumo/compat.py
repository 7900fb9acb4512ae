"""Reading and writing the DuMo authors' per-concept checkpoint folders.

Their release ships one folder per erased concept, in diffusers' model layout::

    <concept>/config.json                           # "_class_name": "DuMo"
    <concept>/diffusion_pytorch_model.safetensors   # conv_in, time_embedding, down_blocks, mid_block,
                                                    # dumo_down_blocks.{0..11}, dumo_mid_block
    <concept>/time_scale.npy                        # float32 (20, 13), the TLMO table

:class:`~veil.methods.dumo.model.DuMoEPR` keeps those parameter names, so a folder maps one to one
onto a veil DuMo method (tensors under ``dumo.<concept>.``) and from there onto a veil artifact.
"""

import json
import logging
import os

import numpy as np
import torch
from safetensors.torch import load_file

from ..._io import atomic_dir
from ...errors import VeilError
from .config import DuMoConfig
from .method import TIME_ROWS, DuMo, _slug

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
LEGACY_WEIGHTS_NAME = "diffusion_pytorch_model.bin"
CONFIG_NAME = "config.json"
TIME_SCALE_NAME = "time_scale.npy"
_EPR_PREFIXES = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.", "dumo_down_blocks.", "dumo_mid_block.")


def read_authors_folder(path):
    """The tensors of one authors' checkpoint folder: EPR weights by their own names plus ``time_scale``.

    Returns:
        `tuple`: (``{name: tensor}``, the folder's ``config.json`` as a dict, or ``{}``).
    """
    if not os.path.isdir(path):
        raise VeilError(f"DuMo checkpoint folder {path!r} does not exist; pass the folder holding {WEIGHTS_NAME}.")
    weights = os.path.join(path, WEIGHTS_NAME)
    legacy = os.path.join(path, LEGACY_WEIGHTS_NAME)
    try:
        if os.path.isfile(weights):
            tensors = load_file(weights)
        elif os.path.isfile(legacy):
            # weights_only: a pickle may run code on load; only plain tensors are accepted.
            tensors = torch.load(legacy, map_location="cpu", weights_only=True)
        else:
            raise VeilError(f"{path!r} holds neither {WEIGHTS_NAME} nor {LEGACY_WEIGHTS_NAME}; is it a DuMo checkpoint folder?")
    except VeilError:
        raise
    except Exception as error:  # noqa: BLE001 - any unreadable file means the same to the user
        raise VeilError(f"The DuMo weights in {path!r} are unreadable ({error}); download the folder again.") from None
    if not isinstance(tensors, dict) or not all(torch.is_tensor(v) for v in tensors.values()):
        raise VeilError(f"The DuMo weights in {path!r} are not a flat dictionary of tensors.")
    kept = {k: v for k, v in tensors.items() if k.startswith(_EPR_PREFIXES)}
    ignored = sorted(set(tensors) - set(kept))
    if ignored:
        logger.warning("Ignoring %d tensors of %s that are not part of EPR (first: %s).", len(ignored), path, ignored[0])
    if not kept:
        raise VeilError(f"{path!r} holds no EPR tensors (conv_in, down_blocks, dumo_down_blocks, ...); is it a DuMo checkpoint?")
    config = {}
    if os.path.isfile(os.path.join(path, CONFIG_NAME)):
        try:
            with open(os.path.join(path, CONFIG_NAME)) as handle:
                config = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise VeilError(f"{os.path.join(path, CONFIG_NAME)!r} is not readable JSON ({error}).") from None
    scale_path = os.path.join(path, TIME_SCALE_NAME)
    if os.path.isfile(scale_path):
        scale = np.load(scale_path, allow_pickle=False)
        if scale.ndim != 2 or scale.shape[0] != TIME_ROWS:
            raise VeilError(f"{scale_path!r} has shape {scale.shape}; a DuMo time-scale table is ({TIME_ROWS}, slots).")
        kept["time_scale"] = torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32))
    else:
        logger.warning("%s has no %s; its time-scale table starts at ones.", path, TIME_SCALE_NAME)
    return kept, config


def load_authors_checkpoint(folders, **config):
    """A veil DuMo method holding the weights of the authors' per-concept checkpoint folders.

    Args:
        folders (`str`, `list` or `dict`): one folder, several, or ``{concept: folder}``; without
            concept names each folder's own name is the concept.
        **config: further :class:`DuMoConfig` fields (``gate``, ``facilitate``, ...). Without them the method is
            in paper mode, as the release runs it; a concept ungated by name (nudity) also leaves out the
            time-scale table, as the release's nudity script does, unless ``apply_time_scale`` is given.

    Returns:
        `DuMo`: not attached; ``attach(pipe)`` builds each EPR for ``pipe``'s UNet and checks every
        shape.

    Example:
        >>> method = load_authors_checkpoint({"Van Gogh": "DuMo/vangogh"})
        >>> method.attach(pipe)
    """
    folders = _folders(folders)
    if not folders:
        raise VeilError("Give at least one DuMo checkpoint folder.")
    state, configs = {}, {}
    for concept, folder in folders.items():
        tensors, configs[concept] = read_authors_folder(folder)
        state.update({f"dumo.{concept}.{name}": tensor for name, tensor in tensors.items()})
    settings = DuMoConfig(concepts=list(folders), **config)
    if "apply_time_scale" not in config and settings.gate is None and not settings.gate_enabled:
        settings.apply_time_scale = False  # the release's nudity script: neither the table nor the gate
    method = DuMo(settings)
    method.load_state_dict(state)
    method.authors_configs = configs
    return method


def authors_checkpoint_to_artifact(folders, pipe, **config):
    """Convert authors' checkpoint folders into a veil :class:`~veil.artifact.Artifact` for ``pipe``'s base
    model; every tensor is checked against that UNet first."""
    from ...artifact import Artifact

    method = load_authors_checkpoint(folders, **config)
    for concept, authors in method.authors_configs.items():
        for key in ("block_out_channels", "layers_per_block", "cross_attention_dim"):
            if key in authors and key in pipe.unet.config and _as_list(authors[key]) != _as_list(pipe.unet.config[key]):
                raise VeilError(
                    f"The DuMo checkpoint of {concept!r} has {key}={authors[key]!r}, but the model's UNet has "
                    f"{pipe.unet.config[key]!r}; load the base model it was trained on."
                )
    method.attach(pipe)  # builds every EPR; a shape that does not fit fails here
    method.detach(pipe)
    return Artifact.from_method(method, pipe, cost={"imported_from": {c: str(f) for c, f in _folders(folders).items()}})


def save_authors_checkpoint(method, folder, concept=None, overwrite=False):
    """Write one concept of an attached (or trained) DuMo method in the authors' folder layout."""
    concept = method.config.concepts[0] if concept is None else concept
    if concept not in method.eprs:
        raise VeilError(f"The EPR of {concept!r} is not built; attach the method to its pipeline first.")
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        _write_concept(method, concept, tmp)
    return folder


def _write_concept(method, concept, folder):
    method.eprs[concept].save_pretrained(folder, safe_serialization=True)
    # The release loads the folder with its own class; its name in config.json is what from_pretrained reads.
    config_path = os.path.join(folder, CONFIG_NAME)
    with open(config_path) as handle:
        config = json.load(handle)
    with open(config_path, "w") as handle:
        json.dump(dict(config, _class_name="DuMo"), handle, indent=2, sort_keys=True)
    np.save(os.path.join(folder, TIME_SCALE_NAME), method.time_scale(concept).astype(np.float32))


def export_authors_checkpoints(artifact, pipe, out, overwrite=False):
    """A veil DuMo artifact in the authors' layout: ``out`` is the concept's folder, or holds one folder per
    concept (named after it) when the artifact erases several.

    Example:
        >>> export_authors_checkpoints(veil.load_artifact("erased/"), pipe, "dumo-circle/")
    """
    require_dumo(artifact)
    method = artifact.attach(pipe)  # builds every EPR for the base model
    try:
        concepts = method.config.concepts
        with atomic_dir(out, overwrite=overwrite) as tmp:
            for concept in concepts:
                folder = tmp if len(concepts) == 1 else os.path.join(tmp, _slug(concept))
                os.makedirs(folder, exist_ok=True)
                _write_concept(method, concept, folder)
    finally:
        artifact.detach(pipe)
    return out


def require_dumo(artifact):
    if artifact.method_name != "dumo":
        raise VeilError(f"Only DuMo artifacts have the authors' DuMo layout, but this one is {artifact.method_name}; "
                        "choose --format pipeline or unet-state-dict.")


def is_authors_folder(path):
    """Whether ``path`` is a DuMo checkpoint folder in the authors' layout (and not a veil artifact)."""
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "veil.json")):
        return False
    if not any(os.path.isfile(os.path.join(path, n)) for n in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME)):
        return False
    try:
        with open(os.path.join(path, CONFIG_NAME)) as handle:
            return json.load(handle).get("_class_name") == "DuMo"
    except (OSError, ValueError, AttributeError):
        return False


def authors_artifact(path, **config):
    """An authors' DuMo checkpoint folder as a veil artifact, its concept the folder's name. Its base model is
    not recorded in the folder, so ``attach`` checks every tensor's shape against the pipeline's UNet instead of
    a fingerprint."""
    from ...artifact import Artifact

    method = load_authors_checkpoint(path, **config)
    return Artifact.from_method(method, None, cost={"imported_from": str(path)})


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _folders(folders):
    if isinstance(folders, dict):
        return folders
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    return {os.path.basename(os.path.normpath(str(f))): f for f in folders}
