"""Fréchet Inception Distance with streaming sums (``update`` / ``compute``).

``FID = |mu_r - mu_g|² + tr(C_r) + tr(C_g) - 2 tr((C_r^½ C_g C_r^½)^½)`` over feature vectors of
real (reference) and generated images. Only the feature sum, the sum of outer products and the
count are kept, in float64, so any number of images streams through in fixed memory.
"""

import os

import torch

from . import Metric, register_metric, to_tensor


class FrechetInceptionDistance:
    """Streaming FID over any feature extractor ``(batch, 3, H, W) uint8 -> (batch, features)``.

    Example:
        >>> fid = FrechetInceptionDistance(extractor)
        >>> fid.update(real_images, real=True); fid.update(fake_images, real=False)
        >>> fid.compute()
    """

    def __init__(self, feature_extractor):
        self.feature_extractor = feature_extractor
        self.reset()

    def reset(self):
        self.sums = {True: None, False: None}
        self.outer = {True: None, False: None}
        self.counts = {True: 0, False: 0}

    @torch.no_grad()
    def update(self, images, real):
        """Add a batch: ``images`` is a uint8 tensor ``(batch, 3, H, W)`` or a list of PIL images."""
        if not torch.is_tensor(images):
            images = (to_tensor(images) * 255).round().to(torch.uint8)
        features = self.feature_extractor(images)
        self.update_features(features, real)

    def update_features(self, features, real):
        features = features.detach().reshape(features.shape[0], -1).to("cpu", torch.float64)  # (batch, dim)
        if self.sums[real] is None:
            dim = features.shape[1]
            self.sums[real] = torch.zeros(dim, dtype=torch.float64)
            self.outer[real] = torch.zeros(dim, dim, dtype=torch.float64)
        self.sums[real] += features.sum(dim=0)
        self.outer[real] += features.T @ features
        self.counts[real] += features.shape[0]

    def _moments(self, real):
        n = self.counts[real]
        mean = self.sums[real] / n
        covariance = (self.outer[real] - n * torch.outer(mean, mean)) / (n - 1)
        return mean, covariance

    def compute(self):
        from ...errors import VeilError

        if min(self.counts.values()) < 2:
            raise VeilError(f"FID needs at least 2 real and 2 generated images, got {self.counts[True]} and {self.counts[False]}.")
        mu_r, cov_r = self._moments(True)
        mu_g, cov_g = self._moments(False)
        root_r = _psd_sqrt(cov_r)
        middle = root_r @ cov_g @ root_r
        trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
        fid = (mu_r - mu_g).pow(2).sum() + cov_r.trace() + cov_g.trace() - 2 * trace_root
        return float(fid.clamp(min=0))


def _psd_sqrt(matrix):
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


class TorchScriptInception:
    """The FID Inception-v3 network as a TorchScript file (e.g. ``inception-2015-12-05.pt``), called as
    ``model(images, return_features=True)`` on uint8 ``(batch, 3, H, W)`` images; it resizes to 299 itself."""

    def __init__(self, path, device="cpu"):
        import warnings

        with warnings.catch_warnings():  # the published FID network is TorchScript; torch now prefers torch.export
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(path, map_location=device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, images):
        return self.model(images.to(self.device), return_features=True)


@register_metric("fid", higher_is_better={"fid": False}, aggregation={})
class Fid(Metric):
    """FID of the generated images against a reference: the original model's images for the same
    prompts and seeds (default), or a folder of real images (``reference=PATH``, e.g. COCO val)."""

    scorer_key = "inception"
    headline = ("fid",)
    needs_reference = True

    def __init__(self, scorer=None, path=None, reference=None, batch_size=32, **options):
        super().__init__(scorer, path, **options)
        self.reference = reference
        self.batch_size = int(batch_size)
        self._real_from_folder = None
        if reference:
            self.needs_reference = False  # the real images come from the folder, not the original model

    def load_scorer(self, path):
        from . import require_file

        require_file(path, "the FID Inception-v3 network as a TorchScript file (inception-2015-12-05.pt)", self.name, self.scorer_key)
        if self.reference:
            require_file(self.reference, "a folder of reference images", self.name, "fid_reference")
        return TorchScriptInception(path, device=self.device)

    def reset(self):
        super().reset()
        self.fid = FrechetInceptionDistance(self.scorer)
        if self._real_from_folder is not None:  # the folder's statistics are the same for every variant
            self.fid.sums[True], self.fid.outer[True], self.fid.counts[True] = self._real_from_folder

    def update(self, records, images, references=None):
        if self.scorer is None:
            self.prepare()
            self.reset()
        self.fid.update(images, real=False)
        if references is not None and not self.reference:
            self.fid.update(references, real=True)

    def _stream_folder(self):
        from PIL import Image

        names = sorted(n for n in os.listdir(self.reference) if n.lower().endswith((".png", ".jpg", ".jpeg", ".webp")))
        for start in range(0, len(names), self.batch_size):
            batch = [Image.open(os.path.join(self.reference, n)).convert("RGB") for n in names[start : start + self.batch_size]]
            self.fid.update(batch, real=True)
        self._real_from_folder = (self.fid.sums[True], self.fid.outer[True], self.fid.counts[True])

    def compute(self):
        if self.reference and self._real_from_folder is None:
            self._stream_folder()
        summary = {"fid": self.fid.compute(), "real_images": self.fid.counts[True], "generated_images": self.fid.counts[False]}
        return summary, []

    def info(self):
        return {"metric": self.name, "scorer_path": str(self.path) if self.path else None,
                "reference": self.reference or "the original model's images for the same prompts and seeds"}
