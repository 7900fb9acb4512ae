"""The shapes world's concept rate: the share of images whose classifier label equals what the
prompt names, per concept (the shapes world's analogue of a detector-based erasure metric; docs/evaluation.md)."""

from collections import defaultdict

from ..errors import VeilError

KINDS = ("shape", "colour", "background", "style")  # style: shapes world 2 only


def score_rows(rows, labels):
    """Per-row correctness: ``rows`` name concepts (empty where none), ``labels`` come from the classifier.

    Returns a list of dicts ``{kind: True/False/None}`` (None where the prompt names nothing). A row naming a
    concept of an axis the classifier does not label (a style, for a world-1 classifier) is refused.
    """
    for row in rows:
        unlabelled = [k for k in KINDS if row.get(k) and k not in labels]
        if unlabelled:
            raise VeilError(f"The prompt {row['prompt']!r} names a {unlabelled[0]} ({row[unlabelled[0]]!r}) and the "
                            f"classifier has no {unlabelled[0]} head; pass the classifier of the model's shapes world "
                            "(--scorer classifier=<build folder>/classifier.safetensors).")
    return [{k: (labels[k][i] == row[k]) if row.get(k) else None for k in KINDS} for i, row in enumerate(rows)]


def concept_rates(rows, labels):
    """``{concept: rate}`` over the rows naming each concept, plus ``{kind: accuracy}``."""
    hits, counts = defaultdict(int), defaultdict(int)
    kind_hits, kind_counts = defaultdict(int), defaultdict(int)
    for row, correct in zip(rows, score_rows(rows, labels)):
        for kind in KINDS:
            if correct[kind] is None:
                continue
            concept = row[kind]
            counts[concept] += 1
            hits[concept] += int(correct[kind])
            kind_counts[kind] += 1
            kind_hits[kind] += int(correct[kind])
    rates = {c: hits[c] / counts[c] for c in counts}
    kinds = {k: kind_hits[k] / kind_counts[k] for k in kind_counts}
    return {"rates": rates, "kinds": kinds, "counts": dict(counts)}


def evaluate_prompts(pipe, rows, classify, *, num_inference_steps=25, guidance_scale=3.0, batch_size=64, progress=False):
    """Generate one image per row and score it. ``classify(images) -> {kind: [label, ...]}`` is passed in."""
    from .sampling import generate

    images = generate(
        pipe, [r["prompt"] for r in rows], [r["seed"] for r in rows],
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, batch_size=batch_size, progress=progress,
    )
    labels = classify(images)
    result = concept_rates(rows, labels)
    result["images"] = images
    result["labels"] = labels
    return result
