"""Metrics: scorers of generated images, each registered with ``higher_is_better`` and an aggregation.

A metric is streaming (torchmetrics' shape): ``reset()``, then ``update(records, images, references)``
once per batch, then ``compute()`` for ``(summary, per_image)``. ``records`` are manifest rows (each
with ``id``, ``prompt``, ``seed``, ``path``, ``target`` and the prompt file's extra columns),
``images`` the matching PIL images, ``references`` the original model's images for the same prompts
and seeds (only for metrics with ``needs_reference``).

Heavy scorers are passed in (``scorer=``) or loaded from a local path (``path=``) by ``prepare()``,
which runs before any image is generated so that a missing weights file fails the task up front.

Example:
    >>> metric = get_metric("clip_score")(path="/models/clip-vit-large-patch14")
    >>> metric.prepare(); metric.reset()
    >>> metric.update(records, images)
    >>> summary, per_image = metric.compute()
"""

import difflib
import math

from ...errors import VeilError

METRICS = {}

# How per-image values become one number; ``share`` is the mean of booleans.
AGGREGATIONS = {
    "mean": lambda values: sum(values) / len(values) if values else None,
    "sum": lambda values: sum(values),
    "share": lambda values: sum(bool(v) for v in values) / len(values) if values else None,
    "count": len,
}


def register_metric(name, higher_is_better, aggregation):
    """Class decorator: register a :class:`Metric` under ``name``.

    Args:
        name (`str`): the name task files use.
        higher_is_better (`dict[str, bool]`): per summary key, whether larger is better.
        aggregation (`dict[str, str]`): per per-image field, one of ``AGGREGATIONS``.
    """
    unknown = sorted(set(aggregation.values()) - set(AGGREGATIONS))
    if unknown:
        raise ValueError(f"Unknown aggregation {unknown[0]!r}; use one of {', '.join(AGGREGATIONS)}.")

    def wrap(cls):
        cls.name = name
        cls.higher_is_better = dict(higher_is_better)
        cls.aggregation = dict(aggregation)
        METRICS[name] = cls
        return cls

    return wrap


def _load_builtin_metrics():
    from . import clip_score, concept_rate, fid, lpips, nudenet, topk  # noqa: F401  (registration)


def get_metric(name):
    """The registered metric class called ``name``; unknown names get a "did you mean"."""
    _load_builtin_metrics()
    if name not in METRICS:
        close = difflib.get_close_matches(str(name), list(METRICS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else f" The metrics are {', '.join(sorted(METRICS))}."
        raise VeilError(f"Unknown metric {name!r}.{hint}")
    return METRICS[name]


def list_metrics():
    _load_builtin_metrics()
    return sorted(METRICS)


def aggregate(values, how):
    """Aggregate non-missing per-image ``values`` with the named aggregation."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return AGGREGATIONS[how](values)


class Metric:
    """Base class: per-image fields aggregated over all images, targets and non-targets.

    Subclasses set ``scorer_key`` (the ``--scorer NAME=PATH`` name), implement ``load_scorer`` and
    ``score_batch`` (one dict of per-image fields per image), and may extend ``summarize``.
    """

    name = None
    higher_is_better = {}
    aggregation = {}
    scorer_key = None
    needs_reference = False  # wants the original model's image for the same prompt and seed
    headline = ()  # summary keys the report charts

    def __init__(self, scorer=None, path=None, **options):
        self.scorer = scorer
        self.path = path
        self.device = options.pop("device", "cpu")
        self.options = options
        self.targets = []  # the concepts being erased (set by the harness), for per-concept metrics
        self._per_image = []

    # lifecycle ----------------------------------------------------------------------------------
    def prepare(self):
        """Load the scorer if none was passed in; fails in one sentence when its weights are absent."""
        if self.scorer is None:
            self.scorer = self.load_scorer(self.path)
        return self

    def load_scorer(self, path):
        raise NotImplementedError

    def reset(self):
        self._per_image = []

    def update(self, records, images, references=None):
        if self.scorer is None:
            self.prepare()
        values = self.score_batch(records, images, references)
        for record, value in zip(records, values):
            self._per_image.append(({"id": record["id"], "target": record.get("target")}, value))

    def compute(self):
        """``(summary, per_image)``: summary is a dict of numbers; per_image a list of dicts with ``id``."""
        per_image = [dict(value, id=meta["id"]) for meta, value in self._per_image]
        return self.summarize(self._per_image), per_image

    # scoring ------------------------------------------------------------------------------------
    def score_batch(self, records, images, references=None):
        raise NotImplementedError

    def summarize(self, items):
        """Aggregate every registered field over all images, and over targets / non-targets when marked."""
        summary = {}
        groups = {"": items}
        if any(meta.get("target") is not None for meta, _ in items):
            groups["target_"] = [(m, v) for m, v in items if m.get("target")]
            groups["nontarget_"] = [(m, v) for m, v in items if m.get("target") is False]
        for prefix, group in groups.items():
            for field, how in self.aggregation.items():
                summary[prefix + field] = aggregate([value.get(field) for _, value in group], how)
        for field in self.aggregation:
            a, b = summary.get(f"target_{field}"), summary.get(f"nontarget_{field}")
            if a is not None and b is not None:
                summary[f"{field}_difference"] = a - b  # target minus non-target
        return summary

    def info(self):
        """What results.json records about the scorer: name, source, settings."""
        return {"metric": self.name, "scorer_path": str(self.path) if self.path else None, **self.options}


def require_file(path, what, metric, flag):
    """One-sentence failure naming the file a scorer needs."""
    import os

    if path is None:
        raise VeilError(f"The {metric} metric needs {what}; pass it with --scorer {flag}=PATH.")
    if not os.path.exists(path):
        raise VeilError(f"The {metric} metric needs {what} at {str(path)!r}, which does not exist; pass it with --scorer {flag}=PATH.")
    return path


def to_tensor(images, size=None):
    """PIL images -> float tensor ``(batch, 3, height, width)`` in [0, 1], resized to ``size`` if given."""
    import numpy as np
    import torch

    arrays = []
    for image in images:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            from PIL import Image

            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
