"""Deterministic rendering of scenes, and sampling scenes that satisfy a prompt.

Shapes are drawn without anti-aliasing, so every pixel is exactly a palette colour; the judge
relies on that for renders and tolerates the blur of generated images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .world import BACKGROUNDS, COLORS, IMAGE_SIZE, POSITIONS, SIZES, Prompt, Scene, Shape

CELL = IMAGE_SIZE / 3
CELL_MARGIN = 1.5  # a positioned shape's centre stays this far inside its grid cell
GAP = 2.0  # free pixels between the two shapes of a relation
RELATION_MARGIN = 3.0  # the main axis offset exceeds the other one by this much


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    return _draw(scene, size, BACKGROUNDS[scene.background], lambda shape: COLORS[shape.color])


def silhouette(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene's shapes in white on black: the condition of the shapes-world ControlNet."""
    return _draw(scene, size, (0, 0, 0), lambda shape: (255, 255, 255))


def _draw(scene: Scene, size: int, background, fill_of) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    scale = size / IMAGE_SIZE
    for shape in scene.shapes:
        r, cx, cy = shape.radius * scale, shape.cx * scale, shape.cy * scale
        fill = fill_of(shape)
        if shape.kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r - 1, cy + r - 1], fill=fill)
        elif shape.kind == "square":
            draw.rectangle([cx - r, cy - r, cx + r - 1, cy + r - 1], fill=fill)
        elif shape.kind == "diamond":  # a square turned 45 degrees: not in the world's captions (DreamBooth's subject)
            draw.polygon([(cx - 0.5, cy - r), (cx + r - 1, cy - 0.5), (cx - 0.5, cy + r - 1), (cx - r, cy - 0.5)],
                         fill=fill)
        else:  # triangle pointing up, bounding box centred on (cx, cy)
            draw.polygon([(cx - 0.5, cy - r), (cx - r, cy + r - 1), (cx + r - 1, cy + r - 1)], fill=fill)
    return image


def _radius(rng: np.random.Generator, size: str | None, allowed=("small", "medium", "large")) -> float:
    name = size or allowed[rng.integers(len(allowed))]
    lo, hi = SIZES[name]
    return float(rng.integers(lo, hi + 1))


def _centre_in(rng: np.random.Generator, r: float, position: str | None) -> tuple[float, float]:
    if position is None:
        return tuple(float(rng.uniform(r, IMAGE_SIZE - r)) for _ in range(2))
    col, row = POSITIONS[position]
    out = []
    for index in (col, row):
        lo = max(r, index * CELL + CELL_MARGIN)
        hi = min(IMAGE_SIZE - r, (index + 1) * CELL - CELL_MARGIN)
        out.append(float(rng.uniform(lo, hi)) if hi > lo else (lo + hi) / 2)
    return out[0], out[1]


def _relation_holds(a: Shape, b: Shape, relation: str) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy  # from a to b
    if relation in ("left of", "right of"):
        along, across, sign = dx, dy, 1 if relation == "left of" else -1
    else:
        along, across, sign = dy, dx, 1 if relation == "above" else -1
    separated = sign * along >= a.radius + b.radius + GAP
    return separated and abs(along) >= abs(across) + RELATION_MARGIN


def scene_for_prompt(prompt: Prompt, rng: np.random.Generator, background: str | None = None) -> Scene:
    """A random scene that satisfies ``prompt`` (its caption is the prompt's canonical caption)."""
    background = background or list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if not prompt.relation:
        ((color, kind),) = prompt.objects
        r = _radius(rng, prompt.size)
        cx, cy = _centre_in(rng, r, prompt.position)
        return Scene((Shape(kind, color, r, cx, cy),), background, prompt.caption())
    (c1, k1), (c2, k2) = prompt.objects
    for _ in range(1000):
        ra, rb = _radius(rng, None, ("small", "medium")), _radius(rng, None, ("small", "medium"))
        a = Shape(k1, c1, ra, *_centre_in(rng, ra, None))
        b = Shape(k2, c2, rb, *_centre_in(rng, rb, None))
        if _relation_holds(a, b, prompt.relation):
            return Scene((a, b), background, prompt.caption())
    raise RuntimeError(f"could not place '{prompt.caption()}' in {IMAGE_SIZE}x{IMAGE_SIZE} pixels")


def to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
