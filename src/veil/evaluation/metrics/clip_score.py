"""CLIP score: ``100 · max(cos(image embedding, prompt embedding), 0)`` per image (Hessel et al., 2021)."""

import torch

from . import Metric, register_metric


class ClipScorer:
    """A CLIP model with its tokenizer and image processor, loaded from a local folder or passed in."""

    def __init__(self, model, tokenizer, image_processor, device="cpu"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = device

    @classmethod
    def from_pretrained(cls, path, device="cpu"):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(path, local_files_only=True)
        return cls(model, AutoTokenizer.from_pretrained(path, local_files_only=True),
                   AutoImageProcessor.from_pretrained(path, local_files_only=True), device)

    @torch.no_grad()
    def __call__(self, images, prompts):
        """Per-pair scores, a list of floats."""
        limit = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        text = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        pixels = self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
        image_embeds = self.model.get_image_features(pixel_values=pixels.to(self.device))
        text_embeds = self.model.get_text_features(**{k: v.to(self.device) for k, v in text.items()})
        image_embeds = getattr(image_embeds, "pooler_output", image_embeds)  # transformers versions differ
        text_embeds = getattr(text_embeds, "pooler_output", text_embeds)
        cosine = torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
        return (100.0 * cosine.clamp(min=0)).tolist()


@register_metric(
    "clip_score",
    higher_is_better={"clip_score": True, "target_clip_score": False, "nontarget_clip_score": True},
    aggregation={"clip_score": "mean"},
)
class ClipScore(Metric):
    """Agreement of each image with its own prompt. The scorer is ``scorer(images, prompts) -> [float]``;
    by default a ``transformers`` ``CLIPModel`` folder (e.g. a local copy of openai/clip-vit-large-patch14)."""

    scorer_key = "clip"
    headline = ("target_clip_score", "nontarget_clip_score", "clip_score")

    def load_scorer(self, path):
        import os

        from . import require_file

        what = "a local CLIP model folder (config.json, weights, tokenizer and preprocessor_config.json, e.g. openai/clip-vit-large-patch14)"
        require_file(path, what, self.name, self.scorer_key)
        require_file(os.path.join(path, "config.json"), what, self.name, self.scorer_key)
        return ClipScorer.from_pretrained(path, device=self.device)

    def score_batch(self, records, images, references=None):
        scores = self.scorer(images, [record["prompt"] for record in records])
        return [{"clip_score": float(s)} for s in scores]

    def info(self):
        return {"metric": self.name, "scorer_path": str(self.path) if self.path else None,
                "formula": "100 * max(cos(image, text), 0)"}
