"""Object classification top-1 / top-5 (Imagenette protocol: ResNet-50 on ImageNet labels).

Erasure success on targets is ``1 - target_top{k}``; preservation on the others is ``nontarget_top{k}``.
"""

import torch

from . import Metric, register_metric


class ImageClassifier:
    """A ``transformers`` image-classification model (e.g. a local copy of microsoft/resnet-50) and its processor."""

    def __init__(self, model, image_processor, device="cpu"):
        self.model = model.eval().to(device)
        self.image_processor = image_processor
        self.device = device
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}

    @classmethod
    def from_pretrained(cls, path, device="cpu"):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(path, local_files_only=True)
        return cls(model, AutoImageProcessor.from_pretrained(path, local_files_only=True), device)

    def label_index(self, name):
        """The label whose comma-separated synonyms include ``name`` (case-insensitive), else None."""
        wanted = str(name).strip().lower()
        for index, label in self.id2label.items():
            if wanted in (part.strip().lower() for part in label.split(",")):
                return index
        return None

    @torch.no_grad()
    def __call__(self, images, k=5):
        """Top-``k`` label indices per image, ``(batch, k)``."""
        pixels = self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
        logits = self.model(pixel_values=pixels.to(self.device)).logits
        return logits.topk(k, dim=-1).indices.cpu()


@register_metric(
    "topk",
    higher_is_better={"top1": True, "top5": True, "target_top1": False, "target_top5": False,
                      "nontarget_top1": True, "nontarget_top5": True, "erasure_success_top1": True},
    aggregation={"top1": "share", "top5": "share"},
)
class TopK(Metric):
    """Whether each image's true class (the prompt file's ``class`` column) is the classifier's top-1 / in its top-5."""

    scorer_key = "classifier"
    headline = ("erasure_success_top1", "nontarget_top1")

    def load_scorer(self, path):
        import os

        from . import require_file

        what = "a local image-classification model folder (config.json and weights, e.g. microsoft/resnet-50)"
        require_file(path, what, self.name, self.scorer_key)
        require_file(os.path.join(path, "config.json"), what, self.name, self.scorer_key)
        return ImageClassifier.from_pretrained(path, device=self.device)

    def score_batch(self, records, images, references=None):
        from ...errors import VeilError

        top = self.scorer(images, k=5)
        values = []
        for record, indices in zip(records, top.tolist()):
            label = self.scorer.label_index(record.get("class"))
            if label is None:
                raise VeilError(f"The classifier has no label named {record.get('class')!r}; check the prompt file's class column.")
            values.append({"pred": self.scorer.id2label[indices[0]], "top1": indices[0] == label, "top5": label in indices})
        return values

    def summarize(self, items):
        summary = super().summarize(items)
        for k in ("top1", "top5"):
            if summary.get(f"target_{k}") is not None:
                summary[f"erasure_success_{k}"] = 1 - summary[f"target_{k}"]
        return summary
