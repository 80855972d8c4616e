"""Scenes the world's captions never show, for measuring the downstream tasks with an exact judge.

- Two relations for ReVersion that no caption names: "inside" (a small shape inside a large one;
  the teacher never saw shapes overlap at all) and "larger" (the first shape larger than the
  second; the teacher's relation scenes mix sizes at random, but no caption compares them).
- The DreamBooth subject: an orange *diamond* (a square turned 45 degrees). The world only draws
  axis-aligned squares, so "a square" is the natural class noun and prior preservation has
  something to preserve. (We first tried the hatched hexagon the issue suggests: the shipped VAE,
  trained on flat colours, turns hatching into a flat blend — mean error 15/255 against 3/255
  for a flat hexagon — so no model on it could learn the hatching; see docs/downstream.md.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Callable

import numpy as np
from .judge import detect_objects
from .render import render
from .world import BACKGROUNDS, COLORS, IMAGE_SIZE, SHAPES, Scene, Shape

SUBJECT_KIND = "diamond"
SUBJECT_COLOR = "orange"
SUBJECT_CLASS = "square"
SUBJECT_TOKEN = "sks"
INSTANCE_PROMPT = f"an {SUBJECT_COLOR} {SUBJECT_TOKEN} {SUBJECT_CLASS}"  # the world always names a colour
CLASS_PROMPT = f"an {SUBJECT_COLOR} {SUBJECT_CLASS}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _background(rng: np.random.Generator) -> str:
    return list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]


# ----- relations no caption names: "inside" and "larger"

INNER_RADIUS = (5, 6)
OUTER_RADIUS = (11, 13)
OUTER_KINDS = ("circle", "square")  # a triangle has too little room inside for a second shape


def _pairs(seconds, split: str) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """``[(first, second), ...]`` of ``(color, shape)`` with different colours; a fixed hash keeps a quarter
    of them as "new" entity pairs that no exemplar shows (``split="new"``)."""
    if split not in ("exemplar", "new"):
        raise ValueError(f"unknown split '{split}'; use 'exemplar' or 'new'")
    pairs = [(a, b) for a in product(COLORS, SHAPES) for b in product(COLORS, seconds) if a[0] != b[0]]
    held = [int.from_bytes(hashlib.sha256(repr(p).encode()).digest()[:4], "big") % 4 == 0 for p in pairs]
    return [p for p, h in zip(pairs, held) if h == (split == "new")]


def _inside_scene(inner, outer, rng: np.random.Generator) -> tuple[Shape, ...]:
    big = float(rng.integers(OUTER_RADIUS[0], OUTER_RADIUS[1] + 1))
    small = float(rng.integers(INNER_RADIUS[0], INNER_RADIUS[1] + 1))
    ox, oy = (float(rng.uniform(big, IMAGE_SIZE - big)) for _ in range(2))
    room = max(0.0, big - small * 1.45 - 1.0)  # a corner of the inner shape stays inside a round outer one
    ix, iy = ox + float(rng.uniform(-room, room)), oy + float(rng.uniform(-room, room))
    return Shape(outer[1], outer[0], big, ox, oy), Shape(inner[1], inner[0], small, ix, iy)


def _larger_scene(first, second, rng: np.random.Generator) -> tuple[Shape, ...]:
    """Two separate shapes, the first medium (radius 6-7) and the second small (4-5): sizes the teacher's
    relation scenes mix at random but no caption mentions."""
    for _ in range(1000):
        ra, rb = float(rng.integers(6, 8)), float(rng.integers(4, 6))
        a = Shape(first[1], first[0], ra, *(float(rng.uniform(ra, IMAGE_SIZE - ra)) for _ in range(2)))
        b = Shape(second[1], second[0], rb, *(float(rng.uniform(rb, IMAGE_SIZE - rb)) for _ in range(2)))
        if max(abs(a.cx - b.cx), abs(a.cy - b.cy)) >= ra + rb + 2:
            return a, b
    raise RuntimeError("could not place two separate shapes")


def _inside_holds(first, second) -> bool:
    (ix0, iy0, ix1, iy1), (ox0, oy0, ox1, oy1) = first.box, second.box
    within = ix0 >= ox0 - 1 and iy0 >= oy0 - 1 and ix1 <= ox1 + 1 and iy1 <= oy1 + 1
    return within and _box_area(first) < 0.7 * _box_area(second)


def _box_area(obj) -> int:
    x0, y0, x1, y1 = obj.box
    return (x1 - x0 + 1) * (y1 - y0 + 1)


def _larger_holds(first, second) -> bool:
    return _box_area(first) >= 1.3 * _box_area(second)


@dataclass(frozen=True)
class NovelRelation:
    """A relation of the world that no caption names: how to render exemplars and how to judge it."""

    name: str
    init: str  # the word ReVersion starts from, and the baseline prompt's word
    description: str
    second_kinds: tuple[str, ...]
    scene: Callable
    holds: Callable

    def pairs(self, split: str):
        return _pairs(self.second_kinds, split)


NOVEL_RELATIONS = {
    "inside": NovelRelation("inside", "in", "the first shape inside the second; the teacher never drew overlapping "
                            "shapes", OUTER_KINDS, _inside_scene, _inside_holds),
    "larger": NovelRelation("larger", "and", "the first shape larger than the second; the teacher's relation scenes "
                            "mix sizes, no caption compares them", SHAPES, _larger_scene, _larger_holds),
}


def novel_relation(name: str) -> NovelRelation:
    if name not in NOVEL_RELATIONS:
        raise ValueError(f"unknown embedded relation '{name}'; choose one of: {', '.join(NOVEL_RELATIONS)}")
    return NOVEL_RELATIONS[name]


def relation_caption(first: tuple[str, str], second: tuple[str, str], token: str) -> str:
    """``"a red circle <R> a blue square"`` (``token`` may be a plain word such as "in")."""
    return f"{_article(first[0])} {' '.join(first)} {token} {_article(second[0])} {' '.join(second)}"


def write_relation_exemplars(folder: str | Path, relation: str = "inside", count: int = 12, seed: int = 0,
                             token: str = "<R>") -> Path:
    """``count`` rendered exemplars of ``relation`` and their ``text.json`` (ReVersion's layout: image name ->
    captions with the relation token) in ``folder``."""
    kind = novel_relation(relation)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    pairs = kind.pairs("exemplar")
    captions = {}
    for i in range(count):
        first, second = pairs[rng.integers(len(pairs))]
        name = f"{i:02d}.png"
        render(Scene(kind.scene(first, second, rng), _background(rng), "")).save(folder / name)
        captions[name] = [relation_caption(first, second, token)]
    (folder / "text.json").write_text(json.dumps(captions, indent=1))
    return folder


def relation_holds(relation: str, image: np.ndarray, first_color: str, second_color: str) -> dict[str, bool]:
    """``{"both": both colours drawn, "holds": the relation holds between the two colours' shapes}``."""
    objects = detect_objects(image)
    first = next((o for o in objects if o.color == first_color), None)
    second = next((o for o in objects if o.color == second_color), None)
    if first is None or second is None:
        return {"both": False, "holds": False}
    return {"both": True, "holds": bool(novel_relation(relation).holds(first, second))}


def relation_accuracy(relation: str, images: np.ndarray, pairs) -> dict[str, float]:
    verdicts = [relation_holds(relation, img, a[0], b[0]) for img, (a, b) in zip(images, pairs)]
    return {key: float(np.mean([v[key] for v in verdicts])) for key in ("both", "holds")}


# ----- the DreamBooth subject

def subject_scene(rng: np.random.Generator, color: str = SUBJECT_COLOR) -> Scene:
    r = float(rng.integers(7, 10))
    cx, cy = (float(rng.uniform(r, IMAGE_SIZE - r)) for _ in range(2))
    return Scene((Shape(SUBJECT_KIND, color, r, cx, cy),), _background(rng), "")


def write_subject_exemplars(folder: str | Path, count: int = 6, seed: int = 0) -> Path:
    """``count`` rendered images of the subject (an orange diamond) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 11])
    for i in range(count):
        render(subject_scene(rng)).save(folder / f"{i:02d}.png")
    return folder


def is_diamond(mask: np.ndarray) -> bool:
    """A diamond fills about half its bounding box and narrows towards both its top and its bottom
    (a triangle narrows only at the top, a circle fills ~0.79 and its end bands are wider)."""
    h = mask.shape[0]
    band = max(1, round(0.3 * h))
    widths = mask.sum(1).astype(np.float32)
    widest = max(float(widths.max()), 1.0)
    return mask.mean() < 0.7 and widths[:band].mean() / widest < 0.55 and widths[-band:].mean() / widest < 0.55


def subject_checks(image: np.ndarray, color: str | None = None, position: str | None = None) -> dict[str, bool]:
    """The main object is a diamond (fidelity), of the asked colour and in the asked cell (adherence)."""
    objects = detect_objects(image)
    main = objects[0] if objects else None
    checks = {"diamond": bool(main is not None and is_diamond(main.mask))}
    if color:
        checks["color"] = bool(main is not None and main.color == color)
    if position:
        checks["position"] = bool(main is not None and main.position == position)
    return checks
