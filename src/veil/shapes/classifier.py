"""An independent CNN that labels shapes-world images: one head per concept axis (shape, colour,
background and, in world 2, style).

It is the judge of generation fidelity and erasure efficacy, so it is trained on clean renders
with blur/noise/brightness augmentation and on VAE round-trips (robust to decoder artefacts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from veil.shapes.data import BACKGROUNDS, COLOURS, SHAPES

HEADS = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS}  # world 1's


def world_heads(version: int = 1) -> Dict[str, Tuple[str, ...]]:
    """The classifier heads (axis -> label names) of a shapes-world version."""
    if version == 1:
        return dict(HEADS)
    if version == 2:
        from veil.shapes.world2 import AXES

        return dict(AXES)
    raise ValueError(f"unknown shapes-world version {version!r}; the versions are 1 and 2")
DEFAULT_PATH = Path(__file__).resolve().parent / "weights" / "classifier.safetensors"


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class ShapesClassifier(nn.Module):
    """3 conv stages (32/64/96) with BatchNorm, global avg+max pooling, one linear head per axis.

    Input: float [B,3,32,32] in [0,1]. Output: dict head -> logits. ``heads`` maps each axis to its
    label names (default: world 1's shape, colour and background).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 96), heads: Optional[Dict[str, Sequence[str]]] = None):
        super().__init__()
        w1, w2, w3 = widths
        self.widths = tuple(widths)
        self.labels = {k: tuple(v) for k, v in (heads or HEADS).items()}
        self.features = nn.Sequential(_stage(3, w1), nn.MaxPool2d(2), _stage(w1, w2), nn.MaxPool2d(2),
                                      _stage(w2, w3))
        self.heads = nn.ModuleDict({k: nn.Linear(2 * w3, len(v)) for k, v in self.labels.items()})

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h = self.features((x - 0.5) / 0.25)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images, batch_size: int = 512) -> Dict[str, np.ndarray]:
        """Predicted class indices per head for any supported image format."""
        x = to_tensor(images)
        dev = next(self.parameters()).device
        outs: Dict[str, List[np.ndarray]] = {k: [] for k in self.labels}
        for i in range(0, x.shape[0], batch_size):
            logits = self(x[i:i + batch_size].to(dev))
            for k in self.labels:
                outs[k].append(logits[k].argmax(1).cpu().numpy())
        return {k: (np.concatenate(v) if v else np.zeros(0, dtype=np.int64)) for k, v in outs.items()}


def to_tensor(images) -> torch.Tensor:
    """PIL list / uint8 numpy [B,32,32,3] / float numpy [B,32,32,3] in [0,1] /
    float tensor [B,3,32,32] in [0,1] -> float tensor [B,3,32,32] in [0,1]."""
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
        if x.dim() == 3:
            x = x[None]
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        if images.dtype == torch.uint8:
            x = x / 255.0
        return _resize(x.contiguous())
    if isinstance(images, np.ndarray):
        arr = images
        if arr.ndim == 3:
            arr = arr[None]
        if arr.dtype == np.uint8:
            x = torch.from_numpy(arr.astype(np.float32) / 255.0)
        else:
            x = torch.from_numpy(np.asarray(arr, dtype=np.float32))
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        return _resize(x.contiguous())
    # PIL image or a sequence of PIL images
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(images, Image.Image):
        images = [images]
    arrs = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    if not arrs:
        return torch.zeros(0, 3, 32, 32)
    if any(a.shape[:2] != (32, 32) for a in arrs):
        arrs = [np.asarray(Image.fromarray(a).resize((32, 32), Image.BILINEAR)) for a in arrs]
    return to_tensor(np.stack(arrs))


def _resize(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] != (32, 32):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)


def save_classifier(model: ShapesClassifier, path: Union[str, Path], extra: Optional[dict] = None) -> None:
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    save_file(state, str(path))
    cfg = {"widths": list(model.widths), "labels": {k: list(v) for k, v in model.labels.items()},
           "input": "float RGB [B,3,32,32] in [0,1]"}
    if extra:
        cfg.update(extra)
    path.with_suffix(".json").write_text(json.dumps(cfg, indent=2))


_CACHE: Dict[str, ShapesClassifier] = {}


def load_classifier(path: Optional[Union[str, Path]] = None) -> ShapesClassifier:
    """Load the bundled classifier (eval mode, CPU). Weights are read with safetensors only."""
    from safetensors.torch import load_file
    path = Path(path) if path is not None else DEFAULT_PATH
    cfg_path = path.with_suffix(".json")
    widths, heads = (32, 64, 96), HEADS
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        widths = tuple(cfg.get("widths", widths))
        labels = cfg.get("labels")
        if labels:
            heads = {k: tuple(v) for k, v in labels.items()}
            if heads not in (world_heads(1), world_heads(2)):
                raise ValueError(f"classifier {path} was trained with label names of no shapes world: {labels}")
    model = ShapesClassifier(widths, heads)
    model.load_state_dict(load_file(str(path)), strict=False)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _default() -> ShapesClassifier:
    key = str(DEFAULT_PATH)
    if key not in _CACHE:
        _CACHE[key] = load_classifier()
    return _CACHE[key]


def classify(images, model: Optional[ShapesClassifier] = None) -> Dict[str, List[str]]:
    """Label images. Returns {"shape": [names], "colour": [...], "background": [...]} (and "style" for a
    world-2 classifier)."""
    model = model if model is not None else _default()
    pred = model.predict(images)
    return {k: [names[i] for i in pred[k]] for k, names in model.labels.items()}


def classifier_for(model: Union[str, Path] = "shapes"):
    """``classify`` for a model: a shapes build's own classifier (``classifier.safetensors`` beside its
    ``world.json``) for a build folder, else the bundled one."""
    from veil.shapes import build_folder

    folder = build_folder(model) if str(model) != "shapes" else None
    path = folder / "classifier.safetensors" if folder is not None else None
    if path is None or not path.is_file():
        return classify
    own = load_classifier(path)
    return lambda images: classify(images, own)


# ------------------------------------------------------------------------ training helpers
def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random blur / noise / brightness-contrast on float [B,3,32,32] in [0,1]."""
    B = x.shape[0]
    dev = x.device
    # blur half the batch with a random-strength 3x3 kernel
    blur_w = torch.rand(B, 1, 1, 1, generator=gen) * (torch.rand(B, 1, 1, 1, generator=gen) < 0.5)
    k = torch.tensor([1.0, 2.0, 1.0])
    k2 = (k[:, None] * k[None, :]) / 16.0
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2.to(dev).expand(3, 1, 3, 3), groups=3)
    x = x * (1 - blur_w) + blurred * blur_w
    # brightness / contrast
    gain = 1 + (torch.rand(B, 1, 1, 1, generator=gen) - 0.5) * 0.2
    bias = (torch.rand(B, 1, 1, 1, generator=gen) - 0.5) * 0.1
    x = x * gain + bias
    # gaussian noise
    sigma = torch.rand(B, 1, 1, 1, generator=gen) * 0.05
    x = x + torch.randn(x.shape, generator=gen) * sigma
    return x.clamp(0, 1)


def accuracy(model: ShapesClassifier, images, labels: np.ndarray) -> Dict[str, float]:
    """Per-head accuracy; ``labels`` has one column per head, in the model's head order."""
    was_training = model.training
    model.eval()
    pred = model.predict(images)
    model.train(was_training)
    labels = np.asarray(labels)
    return {k: float((pred[k] == labels[:, i]).mean()) for i, k in enumerate(model.labels)}
