"""The shapes world: a deterministic procedural renderer and its captions.

Every image is 32x32 RGB with one coloured object on a greyscale patterned
background.  Three concept axes are captioned (shape, colour, background);
size, position, rotation, exact grey levels and the colour jitter are
uncaptioned nuisances.

Captions use several templates and 6 synonyms per concept: 4 are used in
training (canonical name first) and 2 are held out, together with 2 held-out
templates; the held-out phrasings make up the paraphrase prompt set.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SUPERSAMPLE = 4

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: Tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS: Tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
KINDS: Tuple[str, ...] = ("shape", "colour", "background")
AXES: Dict[str, Tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS}
SLOTS: Dict[str, str] = {"shape": "s", "colour": "c", "background": "b"}  # each axis's slot in a template
VERSION = 1

CONCEPT_KIND: Dict[str, str] = {
    **{s: "shape" for s in SHAPES},
    **{c: "colour" for c in COLOURS},
    **{b: "background" for b in BACKGROUNDS},
}

# Base RGB of each colour; every render adds +-20 per-channel jitter.
COLOUR_RGB: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 215),
    "yellow": (235, 215, 35),
    "purple": (135, 45, 180),
    "orange": (245, 135, 25),
}
COLOUR_JITTER = 20

SYNONYMS: Dict[str, Dict[str, List[str]]] = {
    # shapes
    "circle": {"train": ["circle", "disk", "orb", "round dot"], "heldout": ["disc", "round shape"]},
    "square": {"train": ["square", "box", "cube", "four-sided shape"], "heldout": ["block", "rectangle"]},
    "triangle": {"train": ["triangle", "pyramid", "three-sided shape", "trigon"],
                 "heldout": ["triangular shape", "wedge"]},
    "star": {"train": ["star", "five-pointed star", "starburst", "star shape"],
             "heldout": ["pentagram", "twinkle"]},
    "cross": {"train": ["cross", "plus sign", "plus", "cruciform shape"],
              "heldout": ["plus symbol", "crucifix"]},
    # colours
    "red": {"train": ["red", "crimson", "scarlet", "cherry red"], "heldout": ["ruby", "vermilion"]},
    "green": {"train": ["green", "emerald", "lime", "grassy green"], "heldout": ["jade", "leafy green"]},
    "blue": {"train": ["blue", "navy", "azure", "sky blue"], "heldout": ["cobalt", "sapphire"]},
    "yellow": {"train": ["yellow", "golden", "lemon", "canary"], "heldout": ["gold", "sunshine yellow"]},
    "purple": {"train": ["purple", "violet", "lavender", "magenta"], "heldout": ["plum", "lilac"]},
    "orange": {"train": ["orange", "amber", "tangerine", "apricot"], "heldout": ["pumpkin", "marigold"]},
    # backgrounds
    "plain": {"train": ["plain", "blank", "solid", "flat"], "heldout": ["uniform", "empty"]},
    "striped": {"train": ["striped", "lined", "banded", "stripy"], "heldout": ["pinstriped", "streaked"]},
    "dotted": {"train": ["dotted", "spotted", "polka-dot", "dot-patterned"],
               "heldout": ["speckled", "dappled"]},
    "checkered": {"train": ["checkered", "chessboard", "checkerboard", "chequered"],
                  "heldout": ["tiled", "plaid"]},
}

TRAIN_TEMPLATES: Tuple[str, ...] = (
    "a {c} {s} on a {b} background",  # the canonical template (index 0)
    "a {b} background with a {c} {s}",
    "a picture of a {c} {s}, {b} background",
    "{c} {s}, {b} backdrop",
    "a drawing of a {c} {s} against a {b} background",
    "a {c} {s} with a {b} background behind it",
)
HELDOUT_TEMPLATES: Tuple[str, ...] = (
    "an image showing a {c} {s} in front of a {b} pattern",
    "there is a {c} {s} over a {b} surface",
)
# Partial captions seen in training, and the share of training captions each kind had (with the empty
# caption's; the rest were full captions).
PARTIAL_TEMPLATES: Dict[str, str] = {
    "cs": "a {c} {s}",
    "sb": "a {s} on a {b} background",
    "s": "a {s}",
}
CAPTION_SHARES: Dict[str, float] = {"empty": 0.10, "cs": 0.07, "sb": 0.07, "s": 0.03}
CANONICAL_TEMPLATE = TRAIN_TEMPLATES[0]


# --------------------------------------------------------------------------- captions
_YU_WORDS = ("uni", "use", "usu", "uti", "eu")  # vowel letter, consonant sound: "a uniform ..."

def fix_articles(text: str) -> str:
    """Turn 'a' into 'an' before a vowel sound ("a orange" -> "an orange")."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        w = words[i]
        if w.lower() in ("a", "an"):
            nxt = words[i + 1].lstrip("\"'(")
            vowel = bool(nxt) and nxt[0].lower() in "aeiou" and not nxt.lower().startswith(_YU_WORDS)
            new = "an" if vowel else "a"
            words[i] = new.capitalize() if w[0].isupper() else new
    return " ".join(words)


def fill(template: str, s: Optional[str] = None, c: Optional[str] = None, b: Optional[str] = None) -> str:
    return fix_articles(template.format(s=s, c=c, b=b))


def canonical_prompt(shape: Optional[str] = None, colour: Optional[str] = None,
                     background: Optional[str] = None) -> str:
    """The canonical caption, e.g. 'a red circle on a plain background'.

    Missing parts are dropped: ('circle',) -> 'a circle'; (None, 'red') -> 'a red object';
    background only -> 'a plain background'.
    """
    noun = shape if shape is not None else "object"
    if shape is None and colour is None and background is not None:
        return fix_articles(f"a {background} background")
    if shape is None and colour is None and background is None:
        return ""
    head = f"a {colour} {noun}" if colour is not None else f"a {noun}"
    if background is not None:
        head += f" on a {background} background"
    return fix_articles(head)


def caption(shape: str, colour: str, background: str, rng: np.random.Generator,
            heldout: bool = False) -> str:
    """A random full caption. ``heldout=False``: a training template with training synonyms.
    ``heldout=True``: a held-out template with held-out synonyms."""
    split = "heldout" if heldout else "train"
    templates = HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES
    t = templates[int(rng.integers(len(templates)))]
    s = _pick(SYNONYMS[shape][split], rng)
    c = _pick(SYNONYMS[colour][split], rng)
    b = _pick(SYNONYMS[background][split], rng)
    return fill(t, s=s, c=c, b=b)


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def all_combos() -> List[Tuple[str, str, str]]:
    return list(itertools.product(SHAPES, COLOURS, BACKGROUNDS))


# --------------------------------------------------------------------------- rendering
def _polygon(points: Iterable[Tuple[float, float]], cx: float, cy: float, rot: float,
             scale: float) -> List[Tuple[float, float]]:
    cr, sr = math.cos(rot), math.sin(rot)
    out = []
    for x, y in points:
        out.append((cx + scale * (x * cr - y * sr), cy + scale * (x * sr + y * cr)))
    return out


def _shape_points(shape: str) -> List[Tuple[float, float]]:
    """Unit-size outline (radius ~1) of a shape, centred at the origin, y pointing down."""
    if shape == "square":
        h = 0.82
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        # equilateral, pointing up, centroid at origin, circumradius 1.1
        r = 1.1
        return [(r * math.cos(a), r * math.sin(a)) for a in
                (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            r = 1.1 if k % 2 == 0 else 0.45
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if shape == "cross":
        w, L = 0.33, 1.0
        return [(-w, -L), (w, -L), (w, -w), (L, -w), (L, w), (w, w), (w, L), (-w, L),
                (-w, w), (-L, w), (-L, -w), (-w, -w)]
    raise ValueError(f"unknown shape {shape!r}")


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Greyscale background as float [32,32] in [0,1]."""
    n = SIZE
    if kind == "plain":
        return np.full((n, n), rng.uniform(0.6, 0.92))
    hi = rng.uniform(0.62, 0.92)
    lo = hi - rng.uniform(0.22, 0.38)
    yy, xx = np.mgrid[0:n, 0:n]
    if kind == "striped":
        phase = int(rng.integers(4))
        coord = yy if rng.random() < 0.5 else xx
        mask = ((coord + phase) % 4) < 2
    elif kind == "dotted":
        px, py = int(rng.integers(5)), int(rng.integers(5))
        mask = (((xx + px) % 5) < 2) & (((yy + py) % 5) < 2)
    elif kind == "checkered":
        px, py = int(rng.integers(8)), int(rng.integers(8))
        mask = ((((xx + px) // 4) + ((yy + py) // 4)) % 2) == 0
    else:
        raise ValueError(f"unknown background {kind!r}")
    return np.where(mask, lo, hi)


def render(shape: str, colour: str, background: str, rng: np.random.Generator) -> np.ndarray:
    """Render one image; returns uint8 [32,32,3]. Deterministic given the rng state."""
    return render_with_mask(shape, colour, background, rng)[0]


def render_with_mask(shape: str, colour: str, background: str,
                     rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`render`'s image (the same for the same rng state) and the object's coverage of each
    pixel, float [32,32] in [0, 1]: where the shape (and so its colour) is; 1 minus it is the background."""
    if shape not in SHAPES or colour not in COLOURS or background not in BACKGROUNDS:
        raise ValueError(f"unknown concept in {(shape, colour, background)}")
    bg = _background(background, rng)
    base = np.array(COLOUR_RGB[colour], dtype=np.float64)
    rgb = np.clip(base + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3), 0, 255) / 255.0
    radius = rng.uniform(7.0, 10.0)
    cx = SIZE / 2 + rng.uniform(-3.5, 3.5)
    cy = SIZE / 2 + rng.uniform(-3.5, 3.5)
    rot = rng.uniform(-0.25, 0.25)

    S = SIZE * SUPERSAMPLE
    mask_img = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(mask_img)
    k = SUPERSAMPLE
    if shape == "circle":
        r = radius * 0.9 * k
        draw.ellipse([cx * k - r, cy * k - r, cx * k + r, cy * k + r], fill=255)
    else:
        pts = _polygon(_shape_points(shape), cx * k, cy * k, rot, radius * k)
        draw.polygon(pts, fill=255)
    m = np.asarray(mask_img, dtype=np.float64) / 255.0
    alpha = m.reshape(SIZE, k, SIZE, k).mean(axis=(1, 3))[..., None]  # box downsample
    img = alpha * rgb[None, None, :] + (1 - alpha) * bg[..., None]
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8), alpha[..., 0]


def make_dataset(n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` images with uniform independent labels. Returns (uint8 [n,32,32,3], int64 [n,3])
    with label columns (shape, colour, background) as indices into SHAPES/COLOURS/BACKGROUNDS."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(len(SHAPES), size=n), rng.integers(len(COLOURS), size=n),
                       rng.integers(len(BACKGROUNDS), size=n)], axis=1).astype(np.int64)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        s, c, b = labels[i]
        images[i] = render(SHAPES[s], COLOURS[c], BACKGROUNDS[b], rng)
    return images, labels


def label_names(labels: np.ndarray) -> List[Tuple[str, str, str]]:
    return [(SHAPES[s], COLOURS[c], BACKGROUNDS[b]) for s, c, b in np.asarray(labels)]


# --------------------------------------------------------------------------- prompt sets
def _row(prompt: str, seed: int, shape=None, colour=None, background=None) -> dict:
    return {"prompt": prompt, "seed": int(seed), "shape": shape, "colour": colour, "background": background}


def canonical_prompts(seeds: Sequence[int] = (0, 1)) -> List[dict]:
    """All 120 combinations in the canonical template, once per seed."""
    return [_row(canonical_prompt(s, c, b), seed, s, c, b)
            for seed in seeds for (s, c, b) in all_combos()]


def short_prompts(seeds: Sequence[int] = (0, 1)) -> List[dict]:
    """Short prompts in canonical words, once per seed: the bare shape word ("circle"), and the partial
    captions the model was trained on ("a circle", "a red circle", "a circle on a dotted background"),
    so every concept is named without the rest of a full caption. The other axes are not named."""
    rows = []
    for seed in seeds:
        for s in SHAPES:
            rows.append(_row(s, seed, s))
            rows.append(_row(fill(PARTIAL_TEMPLATES["s"], s=s), seed, s))
        for s in SHAPES:
            for c in COLOURS:
                rows.append(_row(fill(PARTIAL_TEMPLATES["cs"], s=s, c=c), seed, s, c))
            for b in BACKGROUNDS:
                rows.append(_row(fill(PARTIAL_TEMPLATES["sb"], s=s, b=b), seed, s, None, b))
    return rows


def training_synonym_prompts(seeds: Sequence[int] = (0, 1), rng_seed: int = 1234) -> List[dict]:
    """All 120 combinations phrased with a random training template and random *non-canonical*
    training synonyms (phrasings the model saw in training)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for seed in seeds:
        for s, c, b in all_combos():
            t = TRAIN_TEMPLATES[int(rng.integers(len(TRAIN_TEMPLATES)))]
            p = fill(t, s=_pick(SYNONYMS[s]["train"][1:], rng), c=_pick(SYNONYMS[c]["train"][1:], rng),
                     b=_pick(SYNONYMS[b]["train"][1:], rng))
            rows.append(_row(p, seed, s, c, b))
    return rows


def paraphrase_phrasings() -> List[dict]:
    """Candidate held-out phrasings. Each entry: {"id", "concept", "synonym", "template", "kind"}
    where the template is a format string with {s}/{c}/{b} slots (some may be absent) and the
    held-out synonym replaces one concept (or, for kind 'template', only the template is held out).
    """
    out = []
    # held-out templates with canonical words
    for ti, t in enumerate(HELDOUT_TEMPLATES):
        out.append({"id": f"tmpl{ti}", "concept": None, "synonym": None, "template": t, "kind": "template"})
    # held-out synonym of one concept, other concepts canonical: canonical template, held-out
    # templates and a short form naming just that concept (shapes only, plus colour+shape)
    for concept, syn in SYNONYMS.items():
        kind = CONCEPT_KIND[concept]
        for w in syn["heldout"]:
            templates = [CANONICAL_TEMPLATE, *HELDOUT_TEMPLATES]
            if kind == "shape":
                templates += ["a {s}", "a {c} {s}"]
            elif kind == "colour":
                templates += ["a {c} {s}"]
            for t in templates:
                out.append({"id": f"{concept}:{w}:{t}", "concept": concept, "synonym": w, "template": t,
                            "kind": kind})
    return out


def phrasing_prompts(ph: dict, n: int, rng_seed: int = 0, first_seed: int = 0) -> List[dict]:
    """``n`` prompt rows for a phrasing, with random values for the concepts it doesn't fix."""
    rng = np.random.default_rng(abs(hash_str(ph["id"])) % (2 ** 32) + rng_seed)
    t = ph["template"]
    rows = []
    for i in range(n):
        vals = {"shape": _pick(SHAPES, rng), "colour": _pick(COLOURS, rng), "background": _pick(BACKGROUNDS, rng)}
        if ph["concept"] is not None:
            vals[ph["kind"]] = ph["concept"]
        words = {"s": vals["shape"], "c": vals["colour"], "b": vals["background"]}
        if ph["concept"] is not None:
            words[{"shape": "s", "colour": "c", "background": "b"}[ph["kind"]]] = ph["synonym"]
        prompt = fill(t, **words)
        named = {k: (vals[k] if "{" + key + "}" in t else None)
                 for k, key in (("shape", "s"), ("colour", "c"), ("background", "b"))}
        rows.append(_row(prompt, first_seed + i, **named))
    return rows


def hash_str(s: str) -> int:
    """A stable (process-independent) 32-bit string hash."""
    h = 2166136261
    for ch in s.encode("utf-8"):
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def paraphrase_prompts(n_per_phrasing: int = 12) -> List[dict]:
    """All candidate held-out paraphrase prompts (before filtering on the clean model)."""
    rows = []
    for ph in paraphrase_phrasings():
        rows.extend(phrasing_prompts(ph, n_per_phrasing))
    return rows


PARAPHRASE_CSV_PATH = Path(__file__).resolve().parent / "weights" / "paraphrase_prompts.csv"


def load_paraphrase_prompts(path: Optional[Union[str, Path]] = None) -> List[dict]:
    """The ``shapes_paraphrase`` prompt set: held-out phrasings that the clean model draws
    correctly (written by ``python -m veil.shapes.train``). Empty cells become ``None``."""
    path = Path(path) if path is not None else PARAPHRASE_CSV_PATH
    with open(path, newline="") as fh:
        return [_row(r["prompt"], int(r["seed"]), r["shape"] or None, r["colour"] or None,
                     r["background"] or None) for r in csv.DictReader(fh)]


def prompt_sets(seeds: Sequence[int] = (0, 1)) -> Dict[str, List[dict]]:
    """The world's prompt sets as lists of rows {prompt, seed, shape, colour, background}:
    ``canonical`` (120 combos x seeds), ``train_synonyms`` (training templates, non-canonical
    training synonyms), ``paraphrase_candidates`` (all held-out phrasings) and, once the weights
    are built, ``paraphrase`` (the held-out phrasings the clean model draws correctly)."""
    sets = {
        "canonical": canonical_prompts(seeds),
        "train_synonyms": training_synonym_prompts(seeds),
        "paraphrase_candidates": paraphrase_prompts(),
    }
    if PARAPHRASE_CSV_PATH.exists():
        sets["paraphrase"] = load_paraphrase_prompts()
    return sets
