"""LPIPS (Zhang et al., CVPR 2018) against the original model's image for the same prompt and seed.

The distance between two images: run both through a feature network, unit-normalise every
feature vector along channels, square the difference, weight the channels with a learned
non-negative 1×1 linear layer, average over space and sum over layers. The structure lives here;
the feature network and linear weights are passed in or loaded from a local folder (no torchvision).
"""

import os

import torch
from torch import nn

from . import Metric, register_metric, to_tensor

# LPIPS's input scaling (after mapping images to [-1, 1]), per RGB channel.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
ALEX_CHANNELS = (64, 192, 384, 256, 256)
BACKBONE_FILE = "alexnet.pth"
LINEAR_FILE = "alex.pth"


class AlexNetFeatures(nn.Module):
    """AlexNet's convolutional trunk, laid out so torchvision's ``alexnet`` state dict (``features.*``) loads.

    Returns the five ReLU outputs LPIPS compares.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )
        self.taps = (1, 4, 7, 9, 11)  # indices of the ReLUs whose outputs are compared

    def forward(self, x):
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs


class LPIPS(nn.Module):
    """The LPIPS distance over a feature network.

    Args:
        net (`nn.Module`): maps ``(batch, 3, H, W)`` images (LPIPS-scaled) to a list of feature maps.
        channels (`tuple[int]`): channels of each feature map.
        linear_weights (`list[Tensor]`, *optional*): one ``(1, C, 1, 1)`` weight per layer; ones if absent
            (the "baseline" variant: plain normalised feature distance).
    """

    def __init__(self, net, channels, linear_weights=None):
        super().__init__()
        self.net = net.eval()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        for index, lin in enumerate(self.lins):
            weight = linear_weights[index] if linear_weights is not None else torch.ones_like(lin.weight)
            lin.weight.data.copy_(weight.reshape(lin.weight.shape))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @staticmethod
    def _unit(features, eps=1e-10):
        return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)

    @torch.no_grad()
    def forward(self, x, y):
        """Distances between ``x`` and ``y``, both ``(batch, 3, H, W)`` in [0, 1]; returns ``(batch,)``."""
        x = ((x * 2 - 1) - self.shift) / self.scale
        y = ((y * 2 - 1) - self.shift) / self.scale
        total = 0
        for lin, fx, fy in zip(self.lins, self.net(x), self.net(y)):
            diff = (self._unit(fx) - self._unit(fy)).pow(2)  # (batch, C, h, w)
            total = total + lin(diff).mean(dim=(2, 3))  # (batch, 1)
        return total.reshape(-1)


def load_alex_lpips(folder):
    """LPIPS-Alex from a folder holding ``alexnet.pth`` (torchvision's AlexNet state dict) and
    ``alex.pth`` (LPIPS v0.1 linear weights, keys ``lin{i}.model.1.weight``)."""
    backbone_state = _load_state(os.path.join(folder, BACKBONE_FILE))
    linear_state = _load_state(os.path.join(folder, LINEAR_FILE))
    net = AlexNetFeatures()
    net.load_state_dict({k: v for k, v in backbone_state.items() if k.startswith("features.")})
    weights = []
    for index in range(len(ALEX_CHANNELS)):
        names = [k for k in linear_state if k.startswith(f"lin{index}.") and k.endswith("weight")]
        weights.append(linear_state[names[0]])
    return LPIPS(net, ALEX_CHANNELS, weights)


def _load_state(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


@register_metric(
    "lpips",
    higher_is_better={"target_lpips": True, "nontarget_lpips": False, "lpips_difference": True},
    aggregation={"lpips": "mean"},
)
class Lpips(Metric):
    """LPIPS between each image and the original model's image for the same prompt and seed:
    large on targets (the concept changed), small on non-targets (the rest kept). The scorer is an
    :class:`LPIPS` module or ``scorer(x, y) -> (batch,)``; ``min_size`` upsamples small images."""

    scorer_key = "lpips"
    needs_reference = True
    headline = ("target_lpips", "nontarget_lpips", "lpips_difference")

    def load_scorer(self, path):
        from . import require_file

        what = f"a folder with {BACKBONE_FILE} (torchvision AlexNet weights) and {LINEAR_FILE} (LPIPS v0.1 linear weights)"
        require_file(path, what, self.name, self.scorer_key)
        for name in (BACKBONE_FILE, LINEAR_FILE):
            require_file(os.path.join(path, name), what, self.name, self.scorer_key)
        return load_alex_lpips(path).to(self.device)

    def score_batch(self, records, images, references=None):
        size = max(max(image.size) for image in images)
        size = max(size, int(self.options.get("min_size", 64)))
        device = self.device if isinstance(self.scorer, nn.Module) else "cpu"
        distances = self.scorer(to_tensor(images, size).to(device), to_tensor(references, size).to(device))
        return [{"lpips": float(d)} for d in distances]
