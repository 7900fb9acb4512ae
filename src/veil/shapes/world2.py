"""Version 2 of the shapes world: 12 shapes, 6 colours, 4 backgrounds, 5 styles and implicit objects.

Every image is 32x32 RGB with one object on a greyscale patterned background. Four concept axes
are captioned (shape, colour, background, style); size, position, rotation, grey levels and the
colour jitter are uncaptioned nuisances. A style is how the object is drawn (filled, outlined,
hatched, pixelated, soft-edged) and is independent of its shape and colour.

A shape is named either by a shape word ("circle", "disk") or, implicitly, by an everyday object
of that shape ("a coin"). Each concept has 4 training words and 2 held-out words, each shape 4
training objects and 2 held-out objects, and there are 2 held-out templates: the held-out
phrasings never occur in a training caption, and :func:`heldout_phrases_in` finds them in any text
(captions, a method's preset), so both can be checked.

The API mirrors :mod:`veil.shapes.data` (world 1) with a ``style`` axis added; ``render`` and
``fill`` take the axes as keywords.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import data as _w1
from .data import COLOUR_JITTER, COLOUR_RGB, COLOURS, BACKGROUNDS, SIZE, SUPERSAMPLE, fix_articles, hash_str

VERSION = 2

# No hexagon: at 32x32 it is within a pixel of a circle, and pixelated hexagons and circles could not be told
# apart (bench/results/shapes_world2/classifier-renders); the oval takes its place.
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "oval", "heart", "crescent",
                           "arrow", "diamond", "ring", "pentagon")
STYLES: Tuple[str, ...] = ("filled", "outlined", "hatched", "pixelated", "soft-edged")
KINDS: Tuple[str, ...] = ("shape", "colour", "background", "style")
AXES: Dict[str, Tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS, "style": STYLES}
SLOTS: Dict[str, str] = {"shape": "s", "colour": "c", "background": "b", "style": "st"}
CONCEPT_KIND: Dict[str, str] = {v: k for k, values in AXES.items() for v in values}

# Object size: radius 8-11 px (world 1: 7-10) so that the pentagon's corners survive the pixelated and
# soft-edged styles; centre jitter +-3 px keeps every shape inside the frame.
RADIUS = (8.0, 11.0)
CENTRE_JITTER = 3.0
ROTATION = 0.25
PIXEL = 2  # block side of the pixelated style, px

SYNONYMS: Dict[str, Dict[str, List[str]]] = {
    **{c: _w1.SYNONYMS[c] for c in (*_w1.SHAPES, *COLOURS, *BACKGROUNDS)},
    "oval": {"train": ["oval", "ellipse", "ovoid", "egg shape"], "heldout": ["elliptical form", "ovate shape"]},
    "heart": {"train": ["heart", "love heart", "heart shape", "valentine heart"],
              "heldout": ["love symbol", "cardioid"]},
    "crescent": {"train": ["crescent", "crescent shape", "sickle shape", "lunula"],
                 "heldout": ["curved sliver", "hook shape"]},
    "arrow": {"train": ["arrow", "arrow shape", "pointer", "arrowhead"],
              "heldout": ["direction marker", "chevron arrow"]},
    "diamond": {"train": ["diamond", "rhombus", "lozenge", "diamond shape"],
                "heldout": ["rhomb", "kite shape"]},
    "ring": {"train": ["ring", "annulus", "hoop", "loop"], "heldout": ["circular band", "torus"]},
    "pentagon": {"train": ["pentagon", "five-sided shape", "pentagonal shape", "pentagon shape"],
                 "heldout": ["five-cornered shape", "pentagonal form"]},
    "filled": {"train": ["filled", "opaque", "filled-in", "painted"], "heldout": ["coloured-in", "shaded"]},
    "outlined": {"train": ["outlined", "hollow", "line-drawn", "contour"], "heldout": ["wireframe", "traced"]},
    "hatched": {"train": ["hatched", "hatch-shaded", "engraved", "etched"],
                "heldout": ["line-shaded", "sketch-shaded"]},
    "pixelated": {"train": ["pixelated", "pixel-art", "low-res", "bitmap"], "heldout": ["mosaic", "jaggy"]},
    "soft-edged": {"train": ["soft-edged", "blurry", "fuzzy", "out-of-focus"], "heldout": ["hazy", "feathered"]},
}

# Everyday objects of each shape: named instead of the shape ("a red coin on a plain background").
# "starfish" is one word but the tokenizer splits it into the pieces "star" + "##fish".
OBJECTS: Dict[str, Dict[str, List[str]]] = {
    "circle": {"train": ["coin", "wheel", "full moon", "button"], "heldout": ["cookie", "bottle cap"]},
    "square": {"train": ["die", "window", "sticky note", "napkin"], "heldout": ["postage stamp", "cracker"]},
    "triangle": {"train": ["slice of pizza", "sail", "yield sign", "tortilla chip"],
                 "heldout": ["tent", "traffic cone"]},
    "star": {"train": ["starfish", "sheriff badge", "tree topper", "carambola slice"],
             "heldout": ["anise pod", "christmas ornament"]},
    "cross": {"train": ["first-aid sign", "hospital sign", "pharmacy sign", "swiss flag"],
              "heldout": ["ambulance emblem", "medic patch"]},
    "oval": {"train": ["egg", "rugby ball", "grape", "jelly bean"], "heldout": ["avocado", "pebble"]},
    "heart": {"train": ["valentine", "love emoji", "cupid symbol", "romance sticker"],
              "heldout": ["locket", "wedding sticker"]},
    "crescent": {"train": ["croissant", "banana", "sickle", "toenail clipping"],
                 "heldout": ["boomerang", "melon rind"]},
    "arrow": {"train": ["one-way sign", "direction sign", "cursor", "weather vane"],
              "heldout": ["exit sign", "compass needle"]},
    "diamond": {"train": ["kite", "gemstone", "argyle patch", "rhinestone"],
                "heldout": ["jewel", "harlequin patch"]},
    "ring": {"train": ["donut", "bagel", "life buoy", "bangle"], "heldout": ["wedding band", "bracelet"]},
    "pentagon": {"train": ["home plate", "soccer-ball patch", "okra slice", "birdhouse front"],
                 "heldout": ["school zone sign", "baseball plate"]},
}
OBJECT_SHAPE: Dict[str, str] = {o: s for s, split in OBJECTS.items() for o in split["train"] + split["heldout"]}

TRAIN_TEMPLATES: Tuple[str, ...] = (
    "a {st} {c} {s} on a {b} background",  # the canonical template (index 0)
    "a {b} background with a {st} {c} {s}",
    "a picture of a {c} {s}, {st}, {b} background",
    "{st} {c} {s}, {b} backdrop",
    "a drawing of a {st} {c} {s} against a {b} background",
    "a {c} {s} in {st} style with a {b} background behind it",
)
HELDOUT_TEMPLATES: Tuple[str, ...] = (
    "an image showing a {st} {c} {s} in front of a {b} pattern",
    "there is a {c} {s}, {st}, over a {b} surface",
)
PARTIAL_TEMPLATES: Dict[str, str] = {"cs": "a {c} {s}", "sb": "a {s} on a {b} background", "s": "a {s}",
                                     "sts": "a {st} {s}"}
# Share of training captions of each kind (the empty one is the CFG dropout); the rest are full captions.
CAPTION_SHARES: Dict[str, float] = {"empty": 0.10, "cs": 0.06, "sb": 0.05, "s": 0.03, "sts": 0.06}
# Share of training captions (full or partial) that name the shape by a training object.
OBJECT_SHARE = 0.3
CANONICAL_TEMPLATE = TRAIN_TEMPLATES[0]

__all__ = [
    "VERSION", "SHAPES", "COLOURS", "BACKGROUNDS", "STYLES", "KINDS", "AXES", "SLOTS", "CONCEPT_KIND", "SYNONYMS",
    "OBJECTS", "OBJECT_SHAPE", "TRAIN_TEMPLATES", "HELDOUT_TEMPLATES", "PARTIAL_TEMPLATES", "CAPTION_SHARES",
    "OBJECT_SHARE", "CANONICAL_TEMPLATE", "fill", "canonical_prompt", "caption", "heldout_phrases",
    "heldout_phrases_in", "training_words", "render", "render_with_mask", "make_dataset", "all_combos",
    "canonical_combos", "canonical_prompts", "short_prompts", "training_synonym_prompts", "implicit_prompts",
    "style_prompts", "paraphrase_phrasings", "phrasing_prompts", "paraphrase_prompts", "prompt_sets",
]


# --------------------------------------------------------------------------- captions
def fill(template: str, s: Optional[str] = None, c: Optional[str] = None, b: Optional[str] = None,
         st: Optional[str] = None) -> str:
    """A template with its slots filled and its articles fixed ('a {st} {c} {s}' -> 'an outlined red coin')."""
    return fix_articles(template.format(s=s, c=c, b=b, st=st))


def canonical_prompt(shape: Optional[str] = None, colour: Optional[str] = None, background: Optional[str] = None,
                     style: Optional[str] = None) -> str:
    """The canonical caption, 'a filled red circle on a plain background'; missing parts are dropped
    ('a circle', 'an outlined circle', 'a red object', 'a plain background')."""
    if shape is None and colour is None and style is None:
        return fix_articles(f"a {background} background") if background is not None else ""
    words = [w for w in (style, colour, shape if shape is not None else "object") if w is not None]
    head = "a " + " ".join(words)
    if background is not None:
        head += f" on a {background} background"
    return fix_articles(head)


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def caption(shape: str, colour: str, background: str, style: str, rng: np.random.Generator,
            heldout: bool = False, object_share: float = 0.0) -> str:
    """A random full caption: training templates and words, or (``heldout``) held-out ones. With
    probability ``object_share`` the shape is named by one of its objects of the same split."""
    split = "heldout" if heldout else "train"
    t = _pick(HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES, rng)
    pool = OBJECTS[shape][split] if rng.random() < object_share else SYNONYMS[shape][split]
    return fill(t, s=_pick(pool, rng), c=_pick(SYNONYMS[colour][split], rng),
                b=_pick(SYNONYMS[background][split], rng), st=_pick(SYNONYMS[style][split], rng))


def training_words(concept: str) -> List[str]:
    """Every training phrasing of a concept: its training synonyms, and for a shape its training objects."""
    return list(SYNONYMS[concept]["train"]) + list(OBJECTS.get(concept, {}).get("train", []))


def _template_pattern(template: str) -> "re.Pattern":
    """A regex matching any filling of a template: each slot one to four words, 'a' or 'an' either way."""
    slot = r"[\w'-]+(?:\s+[\w'-]+){0,3}"
    parts = []
    for piece in re.split(r"(\{\w+\}|\s+)", template):
        if re.fullmatch(r"\{\w+\}", piece):
            parts.append(slot)
        elif piece.isspace():
            parts.append(r"\s+")
        elif piece:
            parts.append("an?" if piece in ("a", "an") else re.escape(piece))
    return re.compile(r"(?<![\w-])" + "".join(parts) + r"(?![\w-])", re.IGNORECASE)


def heldout_phrases() -> Dict[str, List[str]]:
    """The held-out phrasings by kind: ``synonyms`` (of every concept), ``objects`` and ``templates``."""
    return {"synonyms": sorted({w for s in SYNONYMS.values() for w in s["heldout"]}),
            "objects": sorted({o for s in OBJECTS.values() for o in s["heldout"]}),
            "templates": list(HELDOUT_TEMPLATES)}


_HELD = heldout_phrases()
_HELD_WORDS = re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in sorted(_HELD["synonyms"] + _HELD["objects"],
                                                                          key=len, reverse=True)) + r")(?![\w-])",
                         re.IGNORECASE)
_HELD_TEMPLATES = [_template_pattern(t) for t in HELDOUT_TEMPLATES]


def _texts(value) -> Iterable[str]:
    """Every string inside a value: a string, or a list/tuple/set/dict of them (keys and values), nested."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _texts(k)
            yield from _texts(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _texts(v)


def heldout_phrases_in(value) -> List[Tuple[str, str]]:
    """The held-out phrasings reachable from ``value`` (a text, or any nesting of lists and dicts of texts,
    e.g. a method's preset settings): ``[(text, phrase)]`` for every held-out synonym or object that
    occurs as whole words and every held-out template that a text fills. Empty means none is reachable."""
    found = []
    for text in _texts(value):
        flat = text.replace("{}", "thing")  # a context with an open slot ('a red {} on ...') is a filling too
        found += [(text, m.group(1).lower()) for m in _HELD_WORDS.finditer(flat)]
        found += [(text, t) for t, pattern in zip(HELDOUT_TEMPLATES, _HELD_TEMPLATES) if pattern.search(flat)]
    return found


# --------------------------------------------------------------------------- rendering
def _shape_points(shape: str) -> List[Tuple[float, float]]:
    """Unit-size outline (radius ~1) of a polygonal shape, centred at the origin, y pointing down."""
    if shape in ("square", "triangle", "star", "cross"):
        return _w1._shape_points(shape)
    if shape == "pentagon":
        return [(1.05 * math.cos(-math.pi / 2 + 2 * math.pi * k / 5), 1.05 * math.sin(-math.pi / 2 + 2 * math.pi * k / 5))
                for k in range(5)]
    if shape == "oval":  # upright, 0.62 as wide as tall
        return [(0.62 * math.cos(a), 1.0 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    if shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(ts) ** 3 / 16.0
        y = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts)) / 16.0
        return [(1.05 * a, 1.05 * (b + 0.1)) for a, b in zip(x, y)]
    if shape == "arrow":  # pointing right
        return [(-1.0, -0.28), (0.15, -0.28), (0.15, -0.75), (1.05, 0.0), (0.15, 0.75), (0.15, 0.28), (-1.0, 0.28)]
    if shape == "diamond":  # taller than wide, so that it is never a rotated square
        return [(0.0, -1.1), (0.66, 0.0), (0.0, 1.1), (-0.66, 0.0)]
    raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(shape: str, cx: float, cy: float, radius: float, rot: float) -> Image.Image:
    """The filled shape at SUPERSAMPLE x resolution, an 'L' image (255 inside)."""
    k = SUPERSAMPLE
    S = SIZE * k
    img = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(img)
    X, Y, R = cx * k, cy * k, radius * k

    def disc(x, y, r, fill):
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill)

    if shape == "circle":
        disc(X, Y, 0.9 * R, 255)
    elif shape == "ring":  # a band about 4-5 px wide: three times an outline's
        disc(X, Y, 0.95 * R, 255)
        disc(X, Y, 0.5 * R, 0)
    elif shape == "crescent":  # a disc with an offset disc cut out, the cut turned with the rotation
        disc(X, Y, R, 255)
        disc(X + 0.5 * R * math.cos(rot), Y + 0.5 * R * math.sin(rot), 0.85 * R, 0)
    else:
        d.polygon(_w1._polygon(_shape_points(shape), X, Y, rot, R), fill=255)
    return img


def _erode(m: np.ndarray, width: int) -> np.ndarray:
    """Erosion by a square of side ``2 * width + 1`` (separable running minima; outside counts as 0)."""
    n = m.shape[0]
    p = np.pad(m, width)
    rows = p[:, 0:n].copy()
    for i in range(1, 2 * width + 1):
        np.minimum(rows, p[:, i:i + n], out=rows)
    out = rows[0:n].copy()
    for i in range(1, 2 * width + 1):
        np.minimum(out, rows[i:i + n], out=out)
    return out


def _style_alpha(mask: Image.Image, style: str, rng: np.random.Generator) -> np.ndarray:
    """The object's coverage at 32x32 for a style applied to a supersampled mask: float in [0, 1], except
    the pixelated style's blocks, whose value (0.88-1.12) also scales the object's colour."""
    k = SUPERSAMPLE
    m = np.asarray(mask, dtype=np.float64) / 255.0

    def down(a):
        return a.reshape(SIZE, k, SIZE, k).mean(axis=(1, 3))

    if style == "filled":
        return down(m)
    if style in ("outlined", "hatched"):
        edge = m - _erode(m, 6)  # a 1.5 px band inside the edge (6 px at 4x)
        if style == "outlined":
            return down(edge)
        # the outline plus 45-degree lines, period 4 px, 1.5 px wide, random phase
        S = SIZE * k
        yy, xx = np.mgrid[0:S, 0:S]
        lines = ((xx + yy + int(rng.integers(4 * k))) % (4 * k)) < 6
        return down(np.maximum(edge, m * lines))
    if style == "pixelated":  # PIXEL px blocks on a random grid phase, hard-edged
        cell = PIXEL
        ox, oy = int(rng.integers(cell)), int(rng.integers(cell))
        cov = np.pad(down(m), ((oy, cell), (ox, cell)))
        ny, nx = (SIZE + oy + cell - 1) // cell, (SIZE + ox + cell - 1) // cell
        blocks = cov[:ny * cell, :nx * cell].reshape(ny, cell, nx, cell).mean(axis=(1, 3)) >= 0.5
        # each block's shade varies by up to +-12 %: a mosaic that marks the style inside the object too
        shade = 1.0 + rng.uniform(-0.12, 0.12, size=blocks.shape)
        big = np.repeat(np.repeat(blocks * shade, cell, 0), cell, 1)
        return big[oy:oy + SIZE, ox:ox + SIZE]
    if style == "soft-edged":  # a gaussian edge of sigma 1 px (more blurs thin shapes, a diamond, away)
        return down(np.asarray(mask.filter(ImageFilter.GaussianBlur(1.0 * k)), dtype=np.float64) / 255.0)
    raise ValueError(f"unknown style {style!r}")


def render_with_mask(shape: str, colour: str, background: str, style: str,
                     rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One image, uint8 [32,32,3], and the object's coverage of each pixel, float [32,32] in [0, 1].
    Deterministic given the rng state."""
    if shape not in SHAPES or colour not in COLOURS or background not in BACKGROUNDS or style not in STYLES:
        raise ValueError(f"unknown concept in {(shape, colour, background, style)}")
    bg = _w1._background(background, rng)
    base = np.array(COLOUR_RGB[colour], dtype=np.float64)
    rgb = np.clip(base + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3), 0, 255) / 255.0
    radius = rng.uniform(*RADIUS)
    cx = SIZE / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)
    cy = SIZE / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)
    rot = rng.uniform(-ROTATION, ROTATION)
    value = _style_alpha(_shape_mask(shape, cx, cy, radius, rot), style, rng)[..., None]
    if style == "pixelated":  # hard blocks, each shaded
        alpha, colour_map = (value > 0).astype(np.float64), np.clip(value * rgb[None, None, :], 0, 1)
    else:
        alpha, colour_map = value, rgb[None, None, :]
    img = alpha * colour_map + (1 - alpha) * bg[..., None]
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8), alpha[..., 0]


def render(shape: str, colour: str, background: str, style: str, rng: np.random.Generator) -> np.ndarray:
    """:func:`render_with_mask`'s image."""
    return render_with_mask(shape, colour, background, style, rng)[0]


def make_dataset(n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` images with uniform independent labels: (uint8 [n,32,32,3], int64 [n,4]) with label columns
    (shape, colour, background, style) as indices into SHAPES/COLOURS/BACKGROUNDS/STYLES."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(len(AXES[k]), size=n) for k in KINDS], axis=1).astype(np.int64)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = render(*(AXES[k][j] for k, j in zip(KINDS, labels[i])), rng=rng)
    return images, labels


def all_combos() -> List[Tuple[str, str, str, str]]:
    """Every (shape, colour, background, style): 1,440."""
    return list(itertools.product(SHAPES, COLOURS, BACKGROUNDS, STYLES))


def canonical_combos() -> List[Tuple[str, str, str, str]]:
    """Every shape x style x colour once (360), the background cycling so that each shape, style and colour
    meets each background about equally often: the prompt set's design."""
    return [(s, c, BACKGROUNDS[(si + ti + ci) % len(BACKGROUNDS)], t)
            for si, s in enumerate(SHAPES) for ti, t in enumerate(STYLES) for ci, c in enumerate(COLOURS)]


# --------------------------------------------------------------------------- prompt sets
def _row(prompt: str, seed: int, shape=None, colour=None, background=None, style=None, **extra) -> dict:
    return {"prompt": prompt, "seed": int(seed), "shape": shape, "colour": colour, "background": background,
            "style": style, **extra}


def canonical_prompts(seeds: Sequence[int] = (0, 1)) -> List[dict]:
    """:func:`canonical_combos` in the canonical template, once per seed (360 a seed)."""
    return [_row(canonical_prompt(s, c, b, t), seed, s, c, b, t) for seed in seeds for s, c, b, t in canonical_combos()]


def short_prompts(seeds: Sequence[int] = (0, 1)) -> List[dict]:
    """Short prompts in canonical words, once per seed: per shape the bare word ("circle") and the partial
    captions the model was trained on ("a circle", "a red circle", "a circle on a dotted background",
    "a hatched circle"). The axes a prompt does not name are unlabelled."""
    rows = []
    for seed in seeds:
        for s in SHAPES:
            rows += [_row(s, seed, s), _row(fill(PARTIAL_TEMPLATES["s"], s=s), seed, s)]
            rows += [_row(fill(PARTIAL_TEMPLATES["cs"], s=s, c=c), seed, s, c) for c in COLOURS]
            rows += [_row(fill(PARTIAL_TEMPLATES["sb"], s=s, b=b), seed, s, None, b) for b in BACKGROUNDS]
            rows += [_row(fill(PARTIAL_TEMPLATES["sts"], s=s, st=t), seed, s, style=t) for t in STYLES]
    return rows


def training_synonym_prompts(seeds: Sequence[int] = (0, 1), rng_seed: int = 1234) -> List[dict]:
    """:func:`canonical_combos` phrased with a random training template and random *non-canonical* training
    synonyms (phrasings the model saw in training)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for seed in seeds:
        for combo in canonical_combos():
            words = {SLOTS[k]: _pick(SYNONYMS[v]["train"][1:], rng) for k, v in zip(KINDS, combo)}
            rows.append(_row(fill(_pick(TRAIN_TEMPLATES, rng), **words), seed, *combo))
    return rows


def implicit_prompts(seeds: Sequence[int] = (0, 1), split: str = "train") -> List[dict]:
    """Every object of a split ('train' or 'heldout') named instead of its shape: per object, the canonical
    template once per colour (background and style cycling) plus 'a {object}' and 'a {colour} {object}'.
    Rows carry ``split`` and ``object``; ``shape`` is the object's shape."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    rows = []
    for seed in seeds:
        for si, s in enumerate(SHAPES):
            for oi, o in enumerate(OBJECTS[s][split]):
                extra = {"split": split, "object": o}
                for ci, c in enumerate(COLOURS):
                    b, t = BACKGROUNDS[(si + oi + ci) % len(BACKGROUNDS)], STYLES[(si + oi + ci) % len(STYLES)]
                    rows.append(_row(fill(CANONICAL_TEMPLATE, s=o, c=c, b=b, st=t), seed, s, c, b, t, **extra))
                c = COLOURS[(si + oi) % len(COLOURS)]
                rows.append(_row(fill(PARTIAL_TEMPLATES["s"], s=o), seed, s, **extra))
                rows.append(_row(fill(PARTIAL_TEMPLATES["cs"], s=o, c=c), seed, s, c, **extra))
    return rows


def style_prompts(seeds: Sequence[int] = (0, 1), rng_seed: int = 4321) -> List[dict]:
    """Per style and shape, once per seed: the canonical template (colour and background cycling), the
    partial caption 'a {style} {shape}' and the canonical template with a non-canonical training word of
    the style; every row names the style and the shape."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for seed in seeds:
        for ti, t in enumerate(STYLES):
            for si, s in enumerate(SHAPES):
                c, b = COLOURS[(ti + si) % len(COLOURS)], BACKGROUNDS[(ti + 2 * si) % len(BACKGROUNDS)]
                rows.append(_row(canonical_prompt(s, c, b, t), seed, s, c, b, t))
                rows.append(_row(fill(PARTIAL_TEMPLATES["sts"], s=s, st=t), seed, s, style=t))
                word = _pick(SYNONYMS[t]["train"][1:], rng)
                rows.append(_row(fill(CANONICAL_TEMPLATE, s=s, c=c, b=b, st=word), seed, s, c, b, t))
    return rows


def paraphrase_phrasings() -> List[dict]:
    """Candidate held-out phrasings: {"id", "concept", "synonym", "template", "kind"}. The held-out templates
    with canonical words, and each held-out synonym of one concept (the others canonical) in the canonical
    template, each held-out template and, for a shape or style, its short forms."""
    out = [{"id": f"tmpl{i}", "concept": None, "synonym": None, "template": t, "kind": "template"}
           for i, t in enumerate(HELDOUT_TEMPLATES)]
    short = {"shape": ["a {s}", "a {c} {s}"], "colour": ["a {c} {s}"], "style": ["a {st} {s}"], "background": []}
    for concept, syn in SYNONYMS.items():
        kind = CONCEPT_KIND[concept]
        for w in syn["heldout"]:
            for t in (CANONICAL_TEMPLATE, *HELDOUT_TEMPLATES, *short[kind]):
                out.append({"id": f"{concept}:{w}:{t}", "concept": concept, "synonym": w, "template": t, "kind": kind})
    return out


def phrasing_prompts(ph: dict, n: int, rng_seed: int = 0, first_seed: int = 0) -> List[dict]:
    """``n`` prompt rows for a phrasing, with random values for the axes it does not fix."""
    rng = np.random.default_rng(hash_str(ph["id"]) + rng_seed)
    rows = []
    for i in range(n):
        vals = {k: _pick(AXES[k], rng) for k in KINDS}
        words = {SLOTS[k]: v for k, v in vals.items()}
        if ph["concept"] is not None:
            vals[ph["kind"]] = ph["concept"]
            words[SLOTS[ph["kind"]]] = ph["synonym"]
        named = {k: (vals[k] if "{" + SLOTS[k] + "}" in ph["template"] else None) for k in KINDS}
        rows.append(_row(fill(ph["template"], **words), first_seed + i, **named))
    return rows


def paraphrase_prompts(n_per_phrasing: int = 4) -> List[dict]:
    """All candidate held-out paraphrase prompts (before filtering on the clean model)."""
    return [r for ph in paraphrase_phrasings() for r in phrasing_prompts(ph, n_per_phrasing)]


def prompt_sets(seeds: Sequence[int] = (0, 1)) -> Dict[str, List[dict]]:
    """The world's built-in prompt sets as lists of rows {prompt, seed, shape, colour, background, style}."""
    return {"canonical": canonical_prompts(seeds), "short": short_prompts(seeds),
            "train_synonyms": training_synonym_prompts(seeds), "implicit": implicit_prompts(seeds, "train"),
            "heldout_implicit": implicit_prompts(seeds, "heldout"), "styles": style_prompts(seeds),
            "paraphrase_candidates": paraphrase_prompts()}
