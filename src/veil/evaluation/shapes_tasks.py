"""Prompt sets of the shapes world, as rows ``{prompt, seed, shape, colour, background}``.

``shapes_concepts``: every shape × colour × background combination in the canonical template,
once per seed. ``shapes_paraphrase``: the held-out phrasings (synonyms and templates never seen in
training) that the clean model draws correctly, measured when the model was built. ``shapes_short``:
the bare shape word and the partial captions the model was trained on ("a circle", "a red circle", "a circle on a
dotted background"), once per seed. ``--prompts``
takes any CSV with those five columns (empty where a prompt names no concept).
"""

import csv
import os

from ..errors import VeilError

COLUMNS = ("prompt", "seed", "shape", "colour", "background")
TASKS = ("shapes_concepts", "shapes_paraphrase", "shapes_synonyms", "shapes_short")


def load_prompt_csv(path):
    """Read a prompt CSV (columns prompt, seed, shape, colour, background) into rows."""
    if not os.path.isfile(path):
        raise VeilError(f"Prompt file {path!r} does not exist; pass a CSV with columns {', '.join(COLUMNS)}.")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise VeilError(f"Prompt file {path!r} lacks the column {missing[0]!r}; it needs {', '.join(COLUMNS)}.")
        rows = []
        for number, raw in enumerate(reader, start=2):
            try:
                seed = int(raw["seed"])
            except (TypeError, ValueError):
                raise VeilError(f"Line {number} of {path!r} has seed {raw['seed']!r}; seeds must be integers.") from None
            rows.append({"prompt": raw["prompt"], "seed": seed, **{k: (raw[k] or None) for k in COLUMNS[2:]}})
    if not rows:
        raise VeilError(f"Prompt file {path!r} has no rows.")
    return rows


def task_rows(task, seeds=(0, 1)):
    """Rows of a named shapes task."""
    from ..shapes import PARAPHRASE_CSV
    from ..shapes.data import canonical_prompts, short_prompts, training_synonym_prompts

    if task == "shapes_concepts":
        return canonical_prompts(seeds=seeds)
    if task == "shapes_synonyms":
        return training_synonym_prompts(seeds=seeds)
    if task == "shapes_short":
        return short_prompts(seeds=seeds)
    if task == "shapes_paraphrase":
        if not os.path.isfile(PARAPHRASE_CSV):
            raise VeilError(f"The paraphrase prompt set {PARAPHRASE_CSV} is missing; rebuild the shapes world.")
        return load_prompt_csv(str(PARAPHRASE_CSV))
    raise VeilError(f"Unknown shapes task {task!r}; use one of {', '.join(TASKS)}.")


def rows_naming(rows, concept):
    """The rows whose prompt names ``concept`` (on any axis), or any of a list of concepts."""
    wanted = {concept} if isinstance(concept, str) else set(concept)
    return [r for r in rows if wanted & {r.get("shape"), r.get("colour"), r.get("background")}]
