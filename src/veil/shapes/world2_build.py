"""The parts of ``python -m veil.shapes.train --world 2`` that belong to world 2: its training-caption
table and the sampler that draws a caption for each image, and the sets of its own fidelity
evaluation with their bars.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from . import world2 as W

# The fidelity bars the build checks (classifier-judged, DDIM 25): every canonical concept, and the shape
# on prompts that name a training object instead of the shape. Held-out objects are reported as measured.
CANONICAL_BAR = 0.95
IMPLICIT_BAR = 0.90
PARTIALS = ("cs", "sb", "s", "sts")


def caption_table(seed: int, k_words: int = 8, k_objects: int = 4) -> Tuple[List[str], Dict[str, object]]:
    """All training captions and index tables into them.

    ``full[s, c, b, t, :k_words]``: the canonical caption and random training phrasings of the combination;
    ``full_obj[..., :k_objects]``: random training phrasings naming the shape by a training object. Each
    partial caption kind (``cs``, ``sb``, ``s``, ``sts``) has every training word of its axes, and an
    ``_obj`` table with the training objects in the shape slot. ``empty`` is the index of "".
    """
    rng = np.random.default_rng(seed)
    texts: List[str] = []
    index: Dict[str, int] = {}

    def add(text: str) -> int:
        if text not in index:
            index[text] = len(texts)
            texts.append(text)
        return index[text]

    syn = {k: v["train"] for k, v in W.SYNONYMS.items()}
    pools = {"": {s: syn[s] for s in W.SHAPES}, "_obj": {s: W.OBJECTS[s]["train"] for s in W.SHAPES}}
    dims = tuple(len(W.AXES[k]) for k in W.KINDS)
    tables: Dict[str, object] = {"empty": add("")}

    def phrasings(combo, shape_pool, k, first=None):
        ids = [add(first)] if first else []
        seen, tries = set(ids), 0
        while len(ids) < k and tries < 50 * k:
            tries += 1
            words = {W.SLOTS[kind]: W._pick(syn[v], rng) for kind, v in zip(W.KINDS, combo)}
            words["s"] = W._pick(shape_pool, rng)
            j = add(W.fill(W._pick(W.TRAIN_TEMPLATES, rng), **words))
            if j not in seen:
                seen.add(j)
                ids.append(j)
        return (ids * k)[:k]  # a combination with fewer distinct phrasings repeats them

    for suffix, k in (("", k_words), ("_obj", k_objects)):
        full = np.zeros(dims + (k,), dtype=np.int64)
        for ix in np.ndindex(*dims):
            combo = tuple(W.AXES[kind][i] for kind, i in zip(W.KINDS, ix))
            first = W.fill(W.CANONICAL_TEMPLATE, s=combo[0], c=combo[1], b=combo[2], st=combo[3]) if not suffix else None
            full[ix] = phrasings(combo, pools[suffix][combo[0]], k, first)
        tables["full" + suffix] = torch.from_numpy(full)
        shape_words = pools[suffix]
        for name, other in (("cs", "colour"), ("sb", "background"), ("sts", "style")):
            slot = W.SLOTS[other]
            tables[name + suffix] = torch.tensor([[[add(W.fill(W.PARTIAL_TEMPLATES[name], s=ws, **{slot: wo}))
                                                     for ws in shape_words[s] for wo in syn[o]]
                                                    for o in W.AXES[other]] for s in W.SHAPES])
        tables["s" + suffix] = torch.tensor([[add(W.fill(W.PARTIAL_TEMPLATES["s"], s=ws)) for ws in shape_words[s]]
                                             for s in W.SHAPES])
    return texts, tables


def sample_caption_ids(labels: torch.Tensor, idx: dict, gen: torch.Generator) -> torch.Tensor:
    """One training caption per image (``labels``: [B, 4] of shape, colour, background, style indices): the
    empty caption or a partial one with the shares of ``CAPTION_SHARES``, else a full caption; in each, the
    shape is named by a training object with probability ``OBJECT_SHARE``."""
    B = labels.shape[0]
    s, c, b, t = labels.unbind(1)
    u = torch.rand(B, generator=gen)
    obj = torch.rand(B, generator=gen) < W.OBJECT_SHARE

    def pick(name, *index):
        words, objects = idx[name], idx[name + "_obj"]
        iw = words[index + (torch.randint(0, words.shape[-1], (B,), generator=gen),)]
        io = objects[index + (torch.randint(0, objects.shape[-1], (B,), generator=gen),)]
        return torch.where(obj, io, iw)

    choices = {"cs": pick("cs", s, c), "sb": pick("sb", s, b), "s": pick("s", s), "sts": pick("sts", s, t)}
    ids = pick("full", s, c, b, t)
    bounds = np.cumsum([W.CAPTION_SHARES["empty"]] + [W.CAPTION_SHARES[k] for k in PARTIALS])
    for name, bound in reversed(list(zip(PARTIALS, bounds[1:]))):
        ids = torch.where(u < float(bound), choices[name], ids)
    return torch.where(u < float(bounds[0]), torch.full_like(ids, idx["empty"]), ids)


def eval_sets(seeds: Sequence[int]) -> Dict[str, List[dict]]:
    """The build's fidelity sets: canonical prompts on every seed; the others on the first seed."""
    one = list(seeds)[:1]
    return {"canonical": W.canonical_prompts(seeds), "train_synonyms": W.training_synonym_prompts(one),
            "styles": W.style_prompts(one), "short": W.short_prompts(one),
            "implicit": W.implicit_prompts(one, "train"), "heldout_implicit": W.implicit_prompts(one, "heldout")}


def bars(ev: dict) -> dict:
    """The fidelity bars against an evaluation: each canonical concept >= 95 %, the shape on training-object
    prompts >= 90 %; what misses, by how much."""
    canon = ev["canonical"]["per_concept"]
    missed = {c: r for c, r in canon.items() if r < CANONICAL_BAR}
    implicit = ev["implicit"]["shape"]
    return {"canonical_bar": CANONICAL_BAR, "canonical_missed": missed, "implicit_bar": IMPLICIT_BAR,
            "implicit_shape": implicit, "heldout_implicit_shape": ev["heldout_implicit"]["shape"],
            "met": not missed and implicit >= IMPLICIT_BAR}


def grid_rows(seed: int = 0) -> Tuple[List[dict], List[str], List[str]]:
    """The sample grid's prompts: every shape (rows) in every style (columns), colour and background cycling."""
    rows = []
    for si, s in enumerate(W.SHAPES):
        for ti, t in enumerate(W.STYLES):
            c, b = W.COLOURS[(si + ti) % len(W.COLOURS)], W.BACKGROUNDS[(si + 2 * ti) % len(W.BACKGROUNDS)]
            rows.append({"prompt": W.canonical_prompt(s, c, b, t), "seed": seed})
    return rows, list(W.SHAPES), list(W.STYLES)
