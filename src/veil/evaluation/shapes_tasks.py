"""Prompt sets of the shapes world, as rows ``{prompt, seed, shape, colour, background}`` (and ``style`` in
world 2, whose implicit rows also carry ``split`` and ``object``).

``shapes_concepts``: every shape × colour × background combination in the canonical template (world 2: every
shape × style × colour, the background cycling), once per seed. ``shapes_paraphrase``: the held-out phrasings
(synonyms and templates never seen in training) that the clean model draws correctly, measured when the
model was built. ``shapes_short``: the bare shape word and the partial captions the model was trained on
("a circle", "a red circle", "a circle on a dotted background"; world 2 also "a hatched circle"), once per
seed. World 2 only: ``shapes_implicit``, each shape named by an everyday object instead ("a red coin on a
plain background"), the training objects' rows (``split`` train) apart from the held-out objects' (``split``
heldout); ``shapes_styles``, every style with every shape, in the canonical template, as "a {style} {shape}"
and with a training synonym of the style. ``--prompts`` takes any CSV with the columns prompt, seed, shape,
colour, background (and optionally style; empty where a prompt names no concept).
"""

import csv
import os

from ..errors import VeilError

COLUMNS = ("prompt", "seed", "shape", "colour", "background")
OPTIONAL_COLUMNS = ("style", "split", "object")
TASKS = ("shapes_concepts", "shapes_paraphrase", "shapes_synonyms", "shapes_short", "shapes_implicit", "shapes_styles")
WORLD2_TASKS = ("shapes_implicit", "shapes_styles")


def load_prompt_csv(path):
    """Read a prompt CSV (columns prompt, seed, shape, colour, background; optionally style) into rows."""
    if not os.path.isfile(path):
        raise VeilError(f"Prompt file {path!r} does not exist; pass a CSV with columns {', '.join(COLUMNS)}.")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise VeilError(f"Prompt file {path!r} lacks the column {missing[0]!r}; it needs {', '.join(COLUMNS)}.")
        extra = [c for c in OPTIONAL_COLUMNS if c in (reader.fieldnames or [])]
        rows = []
        for number, raw in enumerate(reader, start=2):
            try:
                seed = int(raw["seed"])
            except (TypeError, ValueError):
                raise VeilError(f"Line {number} of {path!r} has seed {raw['seed']!r}; seeds must be integers.") from None
            rows.append({"prompt": raw["prompt"], "seed": seed, **{k: (raw[k] or None) for k in (*COLUMNS[2:], *extra)}})
    if not rows:
        raise VeilError(f"Prompt file {path!r} has no rows.")
    return rows


def task_rows(task, seeds=(0, 1), model="shapes"):
    """Rows of a named shapes task, for the shapes world of ``model`` (``"shapes"``, the bundled model, or the
    folder of a shapes build)."""
    from ..shapes import PARAPHRASE_CSV, build_folder, world_data, world_version

    if task not in TASKS:
        raise VeilError(f"Unknown shapes task {task!r}; use one of {', '.join(TASKS)}.")
    version = world_version(model)
    if task in WORLD2_TASKS and version < 2:
        raise VeilError(f"The {task} task needs shapes world 2 (styles and implicit objects), and {model!r} is a "
                        "world-1 model; build world 2 with `python -m veil.shapes.train --world 2` (docs/shapes-world.md) "
                        "and pass --model with its pipeline folder.")
    W = world_data(version)
    if task == "shapes_concepts":
        return W.canonical_prompts(seeds=seeds)
    if task == "shapes_synonyms":
        return W.training_synonym_prompts(seeds=seeds)
    if task == "shapes_short":
        return W.short_prompts(seeds=seeds)
    if task == "shapes_implicit":
        return W.implicit_prompts(seeds, "train") + W.implicit_prompts(seeds, "heldout")
    if task == "shapes_styles":
        return W.style_prompts(seeds)
    folder = build_folder(model)
    path = PARAPHRASE_CSV if str(model) == "shapes" or folder is None else folder / "paraphrase_prompts.csv"
    if not os.path.isfile(path):
        raise VeilError(f"The paraphrase prompt set {path} is missing; rebuild the shapes world.")
    return load_prompt_csv(str(path))


def rows_naming(rows, concept):
    """The rows whose prompt names ``concept`` (on any axis), or any of a list of concepts."""
    wanted = {concept} if isinstance(concept, str) else set(concept)
    return [r for r in rows if wanted & {r.get("shape"), r.get("colour"), r.get("background"), r.get("style")}]
