"""The exact judge of the shapes world: does an image show what its prompt asks?

Pixels are assigned to the nearest palette colour (or to none when far from all of them); the
background is the commonest colour on the border; each remaining colour region of a useful size
is an object, classified by geometry:
- triangle: its top rows are much narrower than its bottom rows (it points up);
- square: the corners of its bounding box are filled; circle: they are not.
Size comes from the bounding box, position from the box centre's cell in a 3x3 grid, relations
from the offset between the two box centres along the dominant axis.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .world import BACKGROUNDS, COLORS, IMAGE_SIZE, POSITIONS, NotJudgeable, Prompt, parse_prompt

PALETTE_NAMES = list(COLORS) + list(BACKGROUNDS)
PALETTE = np.array([COLORS.get(n) or BACKGROUNDS[n] for n in PALETTE_NAMES], dtype=np.float32)
MAX_COLOR_DISTANCE = 90.0  # farther from every palette colour: an unclassified pixel
MIN_AREA = 12  # pixels (at 32x32); a small triangle has about 36
_CELL_OF = {cell: name for name, cell in POSITIONS.items()}


@dataclass(frozen=True)
class DetectedObject:
    color: str
    shape: str
    size: str
    position: str
    area: int
    cx: float
    cy: float
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 (inclusive) of the half-intensity outline
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)  # tight outline mask, for new shapes


def _labels(image: np.ndarray) -> np.ndarray:
    """Palette index of every pixel, -1 where no palette colour is close."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    dist = np.linalg.norm(pixels[:, None, :] - PALETTE[None, :, :], axis=2)
    labels = dist.argmin(1)
    labels[dist.min(1) > MAX_COLOR_DISTANCE] = -1
    return labels.reshape(image.shape[:2])


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    found = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        queue, pixels = deque([(y0, x0)]), []
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        found.append(np.array(pixels))
    return found


def classify_shape(mask: np.ndarray) -> str:
    """circle / square / triangle from a tight boolean mask of one object.

    A triangle's top rows are much narrower than its bottom rows; a square fills its bounding
    box (even blurred, its half-intensity outline only rounds the corners), a circle fills
    about pi/4 of it.
    """
    h, w = mask.shape
    band = max(1, round(0.3 * h))
    widths = mask.sum(1).astype(np.float32)
    top, bottom = widths[:band].mean(), widths[-band:].mean()
    if bottom > 0 and top / bottom < 0.65:
        return "triangle"
    return "square" if mask.mean() >= 0.84 else "circle"


def _half_intensity_mask(array: np.ndarray, labels: np.ndarray, pixels: np.ndarray, background_rgb: np.ndarray,
                         own_label: int) -> np.ndarray:
    """The object's outline at half intensity between background and its own mean colour, so
    that blur (as in generated images) neither grows nor shrinks it. Returns a tight mask."""
    size = array.shape[0]
    (y0, x0), (y1, x1) = np.maximum(pixels.min(0) - 2, 0), np.minimum(pixels.max(0) + 2, size - 1)
    patch = array[y0:y1 + 1, x0:x1 + 1].astype(np.float32)
    own = array[pixels[:, 0], pixels[:, 1]].astype(np.float32).mean(0)
    direction = own - background_rgb
    t = ((patch - background_rgb) @ direction) / max(float(direction @ direction), 1e-6)
    patch_labels = labels[y0:y1 + 1, x0:x1 + 1]
    other_shape = (patch_labels >= 0) & (patch_labels < len(COLORS)) & (patch_labels != own_label)
    mask = (t > 0.5) & ~other_shape
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=bool)
        mask[pixels[:, 0] - y0, pixels[:, 1] - x0] = True
        ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1], (y0 + ys.min(), x0 + xs.min())


def _size_class(extent: int) -> str:
    scale = IMAGE_SIZE / 32
    return "small" if extent < 11 * scale else "large" if extent > 15 * scale else "medium"


def detect_objects(image: Image.Image | np.ndarray) -> list[DetectedObject]:
    """Every object of a shape colour in the image, largest first."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    labels = _labels(array)
    border_pixels = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]]).astype(np.float32)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border = border[border >= 0]
    background = np.bincount(border).argmax() if border.size else -1
    background_rgb = np.median(border_pixels, axis=0)
    size = array.shape[0]
    objects = []
    for index, name in enumerate(PALETTE_NAMES):
        if name not in COLORS or index == background:
            continue
        for pixels in _components(labels == index):
            if len(pixels) < MIN_AREA * (size / 32) ** 2:
                continue
            mask, (y0, x0) = _half_intensity_mask(array, labels, pixels, background_rgb, index)
            cx, cy = x0 + mask.shape[1] / 2, y0 + mask.shape[0] / 2
            cell = (min(2, int(cx * 3 / size)), min(2, int(cy * 3 / size)))
            box = (int(x0), int(y0), int(x0 + mask.shape[1] - 1), int(y0 + mask.shape[0] - 1))
            objects.append(DetectedObject(name, classify_shape(mask), _size_class(max(mask.shape) * 32 / size),
                                          _CELL_OF[cell], len(pixels), cx, cy, box, mask))
    return sorted(objects, key=lambda o: -o.area)


# A relation's axis: right on the axis but wrong on the side means the model placed the objects on the
# right line but did not bind which object goes first (docs/lab/shapes.md, session 8).
AXIS_OF = {"left of": "horizontal", "right of": "horizontal", "above": "vertical", "below": "vertical"}


def objects_of_prompt(objects: list[DetectedObject], prompt: Prompt) -> list[DetectedObject | None]:
    """For each object the prompt names, the largest detected object of its colour (None if there is none)."""
    return [next((o for o in objects if o.color == color), None) for color, _ in prompt.objects]


def relation_between(a: DetectedObject, b: DetectedObject) -> str:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


@dataclass
class Verdict:
    prompt: Prompt
    checks: dict[str, bool]  # attribute -> correct, for every attribute the prompt asks
    objects: list[DetectedObject] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return all(self.checks.values())


def judge(image: Image.Image | np.ndarray, prompt: str | Prompt) -> Verdict:
    """Check an image against its prompt; raise :class:`NotJudgeable` for a prompt outside the world."""
    prompt = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    objects = detect_objects(image)
    if not prompt.relation:
        ((color, shape),) = prompt.objects
        main = objects[0] if objects else None
        checks = {"color": bool(main and main.color == color), "shape": bool(main and main.shape == shape)}
        if prompt.size:
            checks["size"] = bool(main and main.size == prompt.size)
        if prompt.position:
            checks["position"] = bool(main and main.position == prompt.position)
        return Verdict(prompt, checks, objects)
    found = objects_of_prompt(objects, prompt)
    placed = relation_between(*found) if all(found) else None
    checks = {
        "color": all(found),
        "shape": all(o is not None and o.shape == shape for o, (_, shape) in zip(found, prompt.objects)),
        "relation": placed == prompt.relation,
        "axis": placed is not None and AXIS_OF[placed] == AXIS_OF[prompt.relation],
    }
    return Verdict(prompt, checks, objects)


def accuracy_report(images: Sequence[Image.Image | np.ndarray], prompts: Iterable[str | Prompt]) -> dict:
    """Per-attribute accuracy, split by prompt kind (``single/color``, ``relation/relation``, ...).

    Prompts outside the world are counted under ``not_judgeable`` and excluded, not guessed.
    """
    totals: dict[str, list[int]] = {}
    not_judgeable = 0
    for image, prompt in zip(images, prompts):
        try:
            verdict = judge(image, prompt)
        except NotJudgeable:
            not_judgeable += 1
            continue
        items = dict(verdict.checks, all=verdict.correct)
        for attribute, ok in items.items():
            for key in (f"{verdict.prompt.kind}/{attribute}", attribute):
                totals.setdefault(key, [0, 0])
                totals[key][0] += int(ok)
                totals[key][1] += 1
    report = {key: right / count for key, (right, count) in sorted(totals.items())}
    report["judged"] = totals.get("all", [0, 0])[1]
    report["not_judgeable"] = not_judgeable
    return report


def foreground_mask(image: Image.Image | np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """``bool [H, W]``: pixels that differ from the background (the median colour of the image border)
    by more than ``threshold`` in RGB distance: where a generated image drew its shapes."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).astype(np.float32)
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    return np.linalg.norm(array - np.median(border, axis=0), axis=-1) > threshold
