"""The "shapes" world: what a scene is, how it is captioned, and how a prompt is read back.

A scene holds one shape (optionally with a size and a position in a 3x3 grid) or two shapes in
a relation ("left of", "right of", "above", "below"). Captions follow a small fixed grammar so
that the judge can parse any prompt back into the attributes it must check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IMAGE_SIZE = 32

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 50),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
}
# Backgrounds are never a shape colour and are not captioned.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (120, 120, 120),
    "navy": (20, 25, 70),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (4, 5), "medium": (6, 7), "large": (8, 9)}  # half-extent in pixels (min, max)
SIZE_WORDS = {"small": "small", "large": "large"}  # medium is not captioned
POSITIONS = {  # name -> (column, row) in a 3x3 grid
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
POSITION_PHRASES = {"center": "in the center", "left": "on the left", "right": "on the right"}
RELATIONS = ("left of", "right of", "above", "below")


def position_phrase(position: str) -> str:
    return POSITION_PHRASES.get(position, f"at the {position}")


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # one of COLORS
    radius: float  # half-extent in pixels
    cx: float
    cy: float

    @property
    def size(self) -> str:
        return next(name for name, (lo, hi) in SIZES.items() if lo <= self.radius <= hi)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str
    caption: str


@dataclass(frozen=True)
class Prompt:
    """What a prompt asks for. ``size``/``position`` are None when the prompt does not say."""

    objects: tuple[tuple[str, str], ...]  # ((color, shape), ...) in prompt order
    size: str | None = None
    position: str | None = None
    relation: str | None = None

    @property
    def kind(self) -> str:
        return "relation" if self.relation else "single"

    def caption(self) -> str:
        if self.relation:
            (c1, s1), (c2, s2) = self.objects
            return f"{_article(c1)} {c1} {s1} {self.relation} {_article(c2)} {c2} {s2}"
        ((color, shape),) = self.objects
        first = SIZE_WORDS[self.size] if self.size else color
        words = [_article(first)] + ([SIZE_WORDS[self.size]] if self.size else []) + [color, shape]
        if self.position:
            words.append(position_phrase(self.position))
        return " ".join(words)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class NotJudgeable(ValueError):
    """A prompt outside the world's grammar: the judge refuses instead of guessing."""


_OBJ = r"(\w+) (\w+)"
_SINGLE = re.compile(r"^an? (?:(small|large) )?" + _OBJ + r"(?: (in the center|on the left|on the right|at the [a-z ]+))?$")
_RELATION = re.compile(r"^an? " + _OBJ + r" (left of|right of|above|below) an? " + _OBJ + "$")
_PHRASE_TO_POSITION = {position_phrase(p): p for p in POSITIONS}


def _check_object(color: str, shape: str, prompt: str) -> tuple[str, str]:
    if color not in COLORS:
        raise NotJudgeable(f"'{prompt}': unknown colour '{color}' (the world has {', '.join(COLORS)})")
    if shape not in SHAPES:
        raise NotJudgeable(f"'{prompt}': unknown shape '{shape}' (the world has {', '.join(SHAPES)})")
    return color, shape


def parse_prompt(prompt: str) -> Prompt:
    """Read a prompt of the world's grammar; raise :class:`NotJudgeable` otherwise."""
    text = " ".join(prompt.lower().strip().rstrip(".").split())
    match = _RELATION.match(text)
    if match:
        c1, s1, relation, c2, s2 = match.groups()
        return Prompt((_check_object(c1, s1, prompt), _check_object(c2, s2, prompt)), relation=relation)
    match = _SINGLE.match(text)
    if match:
        size, color, shape, phrase = match.groups()
        position = None
        if phrase is not None:
            if phrase not in _PHRASE_TO_POSITION:
                raise NotJudgeable(f"'{prompt}': unknown position '{phrase}'")
            position = _PHRASE_TO_POSITION[phrase]
        return Prompt((_check_object(color, shape, prompt),), size=size, position=position)
    raise NotJudgeable(f"'{prompt}' is not a prompt of the shapes world (e.g. 'a small red circle at the top left' "
                       "or 'a green triangle left of a yellow circle')")


def vocabulary() -> list[str]:
    """Every word a caption can contain (for the world's tokenizer)."""
    words = {"a", "an", "of", "in", "on", "at", "the"}
    words |= set(COLORS) | set(SHAPES) | set(SIZE_WORDS.values())
    for phrase in list(POSITIONS) + list(RELATIONS):
        words |= set(phrase.split())
    return sorted(words)
