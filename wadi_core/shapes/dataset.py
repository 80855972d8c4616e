"""Seeded data of the shapes world: prompts split into train / held-out compositions, and
rendered scenes.

A composition is a prompt's full attribute set (its canonical caption). About 10% of all
compositions are held out by a fixed hash, so no held-out prompt is ever a training caption;
every colour, shape, size, position and relation still occurs in training in other combinations.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from itertools import product

import numpy as np

from .render import render, scene_for_prompt, to_array
from .world import COLORS, POSITIONS, RELATIONS, SHAPES, SIZE_WORDS, Prompt, Scene

SPLITS = ("train", "heldout")
HELDOUT_EVERY = 10


def split_of(prompt: Prompt) -> str:
    digest = hashlib.sha256(prompt.caption().encode()).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % HELDOUT_EVERY == 0 else "train"


@lru_cache(maxsize=None)
def all_prompts(kind: str) -> tuple[Prompt, ...]:
    """Every composition of a kind ("single" or "relation")."""
    objects = list(product(COLORS, SHAPES))
    if kind == "single":
        return tuple(Prompt((obj,), size=size, position=pos)
                     for obj in objects for size in (None, *SIZE_WORDS) for pos in (None, *POSITIONS))
    if kind == "relation":
        return tuple(Prompt((a, b), relation=rel) for a in objects for b in objects for rel in RELATIONS
                     if a[0] != b[0])  # two different colours, so the judge can tell the objects apart
    raise ValueError(f"unknown prompt kind '{kind}'; use 'single' or 'relation'")


@lru_cache(maxsize=None)
def prompts_of(split: str, kind: str) -> tuple[Prompt, ...]:
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; use 'train' or 'heldout'")
    return tuple(p for p in all_prompts(kind) if split_of(p) == split)


def sample_prompts(n: int, split: str = "heldout", seed: int = 0, relation_share: float = 0.5) -> list[Prompt]:
    """``n`` prompts of a split, single-object and relation prompts mixed (repeats allowed)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kind = "relation" if rng.random() < relation_share else "single"
        pool = prompts_of(split, kind)
        out.append(pool[rng.integers(len(pool))])
    return out


def sample_scenes(n: int, split: str = "train", seed: int = 0, relation_share: float = 0.5) -> list[Scene]:
    rng = np.random.default_rng([seed, 1])
    return [scene_for_prompt(p, rng) for p in sample_prompts(n, split, seed, relation_share)]


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """``uint8 [n, H, W, 3]`` images of the scenes."""
    return np.stack([to_array(render(s)) for s in scenes])
