"""Reference UCE edits computed once by the authors' released code, for tests/test_reference_uce.py.

The authors' code is imported from the paths given on the command line; nothing of it is copied here.

* ``--current``: ``trainscripts/uce_sd_erase.py`` of github:rohitgandikota/unified-concept-editing (its
  ``UCE`` function), run on the bundled shapes model: float32 as released (two tensors of each edit kept,
  so that a fixture stays under 1 MB) and, because the release inverts a matrix of condition number ~6e4 in
  float32, once more with the model and every step in float64 (one tensor kept).
* ``--paper-era``: ``train-scripts/train_erase.py`` of the same repository at the commit given with
  ``--paper-era-commit`` (its ``edit_model``, technique ``replace``, lambda 0.5 and preserve scale
  max(0.1, 1/n) as its ``__main__`` passes them), run on the tiny pipeline with a CLIP text encoder: the
  script encodes without an attention mask, as SD's CLIP does, so a masked encoder would give other states.
  Every edited tensor is kept, from a float32 run as released and from a float64 one.

Usage: see command.txt next to this file.
"""

import argparse
import ast
import contextlib
import copy
import itertools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

import veil
from veil.models import build_tiny_pipeline

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _authors import function_from_file  # noqa: E402
# Cases of the current script: (name, concepts, guide, preserve). The empty guide is the script's default.
CURRENT_CASES = [
    ("current-circle-to-empty", ["circle"], "", []),
    ("current-circle-to-triangle-keep-square-star", ["circle"], "triangle", ["square", "star"]),
]
CURRENT_KEPT = (
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight",
)
# Cases of the paper-era script: (name, concepts, guide, preserve); its '' guide is sent as ' '.
PAPER_ERA_CASES = [
    ("paper-era-circle-to-empty-keep-square", ["circle"], "", ["square"]),
    ("paper-era-red-circle-to-blue-triangle", ["a red circle"], "a big blue triangle", ["square", "a star"]),
]


def _import(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commit(path):
    try:
        return subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(path)), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_current(script, commit, dtype):
    """The script as released (float32), or with the model and its arithmetic in float64 (``dtype``)."""
    authors = _import(script, "uce_sd_erase")
    pipe = veil.load_pipeline("shapes", dtype=dtype)
    # The script reads these module globals, which its __main__ sets.
    authors.device, authors.torch_dtype = pipe.device, dtype
    suffix, kept = ("", CURRENT_KEPT) if dtype == torch.float32 else ("-float64", CURRENT_KEPT[:1])
    for name, concepts, guide, preserve in CURRENT_CASES:
        with tempfile.TemporaryDirectory() as tmp, _float_cast_kept_for(dtype):
            authors.UCE(pipe, list(concepts), [guide] * len(concepts), list(preserve), 1.0, 1.0, 0.5, tmp, name)
            edited = load_file(os.path.join(tmp, name + ".safetensors"))
        tensors = {k: edited[k].contiguous() for k in kept}
        meta = {"script": "trainscripts/uce_sd_erase.py", "commit": commit, "model": "shapes", "concepts": concepts,
                "guide": guide, "preserve_concepts": preserve, "erase_scale": 1.0, "preserve_scale": 1.0, "lamb": 0.5,
                "dtype": str(dtype).replace("torch.", "")}
        _save(name + suffix, tensors, meta)


@contextlib.contextmanager
def _default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _float_cast_kept_for(dtype):
    """In a float64 run, ``Tensor.float()`` leaves float64 tensors as they are: the script casts the matrix it
    inverts to float32, which would make the float64 reference no more accurate than the release."""
    if dtype != torch.float64:
        yield
        return
    cast = torch.Tensor.float
    torch.Tensor.float = lambda self, *args, **kwargs: self if self.dtype == torch.float64 else cast(self, *args, **kwargs)
    try:
        yield
    finally:
        torch.Tensor.float = cast


def run_paper_era(script, commit):
    # The script downloads a CLIP model when imported; only its edit_model function is executed, from its file.
    edit_model = function_from_file(script, "edit_model", {"torch": torch, "copy": copy, "ast": ast})
    for (name, concepts, guide, preserve), dtype in itertools.product(PAPER_ERA_CASES, (torch.float32, torch.float64)):
        pipe = build_tiny_pipeline(seed=0, text_encoder="clip").to(dtype)
        retain = [""] + list(preserve)  # as its __main__ builds the preserve set
        preserve_scale = max(0.1, 1 / len(retain))
        # In the float64 run its torch.eye (default dtype) is float64 too, so that every step is.
        with torch.no_grad(), _default_dtype(dtype):
            edit_model(pipe, list(concepts), [guide] * len(concepts), retain, lamb=0.5, erase_scale=1.0,
                               preserve_scale=preserve_scale, technique="replace")
        tensors = {k: v.detach().contiguous() for k, v in pipe.unet.state_dict().items()
                   if "attn2.to_k." in k or "attn2.to_v." in k}
        meta = {"script": "train-scripts/train_erase.py::edit_model", "commit": commit, "model": "tiny-clip",
                "concepts": concepts, "guide": guide, "preserve_concepts": preserve, "erase_scale": 1.0,
                "preserve_scale": preserve_scale, "lamb": 0.5, "technique": "replace", "dtype": str(dtype).replace("torch.", "")}
        _save(name + ("" if dtype == torch.float32 else "-float64"), tensors, meta)


def _save(name, tensors, meta):
    path = os.path.join(HERE, name + ".safetensors")
    save_file(tensors, path + ".tmp", metadata={"reference": json.dumps(meta, sort_keys=True)})
    os.replace(path + ".tmp", path)
    print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--current", help="Path of the authors' trainscripts/uce_sd_erase.py.")
    parser.add_argument("--paper-era", help="Path of the authors' train-scripts/train_erase.py (an older commit).")
    parser.add_argument("--paper-era-commit", help="The commit the paper-era script was taken from.")
    parser.add_argument("--current-commit", help="The commit of the current script, when its folder is not a git clone.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.current:
        for dtype in (torch.float32, torch.float64):
            run_current(args.current, args.current_commit or _commit(args.current), dtype)
    if args.paper_era:
        run_paper_era(args.paper_era, args.paper_era_commit)


if __name__ == "__main__":
    main()
