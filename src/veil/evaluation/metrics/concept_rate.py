"""Shapes concept rate: the share of images whose bundled-classifier label equals what the prompt names."""

from ..concept_rate import KINDS, concept_rates, score_rows
from . import Metric, register_metric


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@register_metric(
    "concept_rate",
    higher_is_better={"accuracy": True, "target_rate": False, "nontarget_rate": True},
    aggregation={"correct": "share"},
)
class ConceptRate(Metric):
    """Per concept (shape, colour, background, style word), the share of images that show it, by the shapes classifier.

    The scorer is ``classify(images) -> {"shape": [...], "colour": [...], "background": [...]}`` (and
    ``"style"`` in world 2); by default the bundled classifier (``veil.shapes.classifier.classify``).
    ``target_rate`` is the mean rate over the erased concepts (lower is better), ``nontarget_rate`` over all
    others. Rows with a ``split`` (``shapes_implicit``: training and held-out objects) are also summarised per
    split, under ``splits``.
    """

    scorer_key = "classifier"
    headline = ("accuracy", "target_rate", "nontarget_rate")

    def load_scorer(self, path):
        from ...shapes import CLASSIFIER_PATH
        from . import require_file

        path = require_file(path or str(CLASSIFIER_PATH), "the shapes classifier weights (classifier.safetensors)",
                            self.name, self.scorer_key)
        self.path = path  # recorded in results.json
        from ...shapes.classifier import classify, load_classifier

        model = load_classifier(path)
        return lambda images: classify(images, model=model)

    def reset(self):
        super().reset()
        self._rows, self._labels = [], {k: [] for k in KINDS}

    def update(self, records, images, references=None):
        if self.scorer is None:
            self.prepare()
        labels = self.scorer(images)
        rows = [{"prompt": r["prompt"], "split": r.get("split") or None, **{k: (r.get(k) or None) for k in KINDS}}
                for r in records]
        for k in KINDS:
            self._labels[k].extend(labels.get(k, [None] * len(rows)))
        self._rows.extend(rows)
        for i, (record, correct) in enumerate(zip(records, score_rows(rows, labels))):
            named = [v for v in correct.values() if v is not None]
            value = {f"pred_{k}": labels[k][i] for k in KINDS if k in labels}
            value["correct"] = all(named) if named else None
            self._per_image.append(({"id": record["id"], "target": record.get("target")}, value))

    def _summary(self, rows, labels):
        result = concept_rates(rows, labels)
        summary = {
            "accuracy": _mean(list(result["kinds"].values())),
            "kinds": result["kinds"],
            "rates": result["rates"],
            "counts": result["counts"],
        }
        if self.targets:
            targets = [c for c in self.targets if c in result["rates"]]
            summary["target_rate"] = _mean([result["rates"][c] for c in targets])
            summary["nontarget_rate"] = _mean([r for c, r in result["rates"].items() if c not in self.targets])
        return summary

    def summarize(self, items):
        labels = {k: v for k, v in self._labels.items() if any(x is not None for x in v)}
        summary = self._summary(self._rows, labels)
        splits = sorted({r["split"] for r in self._rows if r["split"]})
        if splits:
            summary["splits"] = {}
            for split in splits:
                keep = [i for i, r in enumerate(self._rows) if r["split"] == split]
                summary["splits"][split] = self._summary([self._rows[i] for i in keep],
                                                         {k: [v[i] for i in keep] for k, v in labels.items()})
        return summary
