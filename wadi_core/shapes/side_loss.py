"""The side loss: an auxiliary task that makes the text encoder say which object goes where.

Without it a shapes teacher learns the axis of a relation (side by side, or one over the other)
but not which object goes first: half its "A left of B" images show A on the right, on training
captions too, however long it trains (docs/lab/shapes.md, "Session 8"). A linear head reads, from each
text-encoder token from the relation word on, the side of the object that token describes (left,
right, top, bottom) and that object's colour; its cross-entropy trains the text encoder along with
the diffusion loss. The head is dropped after training: the exported model is a plain
``CLIPTextModel``. The first object's own tokens get no target: CLIP's text encoder is causal, so
they cannot know the relation that follows them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wadi_core.shapes.dataset import prompts_of
from wadi_core.shapes.world import COLORS, Prompt

SIDE_NAMES = ("left", "right", "top", "bottom")
# relation -> (side of the first object, side of the second)
SIDES = {"left of": (0, 1), "right of": (1, 0), "above": (2, 3), "below": (3, 2)}
PROMPTS_PER_STEP = 64


def new_head(hidden_size: int, seed: int) -> torch.nn.Linear:
    with torch.random.fork_rng():  # seeded, without moving the global generator of the run
        torch.manual_seed(seed)
        return torch.nn.Linear(hidden_size, len(SIDE_NAMES) + len(COLORS))


def side_targets(tokenizer, prompts: list[Prompt]) -> tuple[torch.Tensor, ...]:
    """``(caption index, token position, side, colour index)`` for every target token."""
    colours = list(COLORS)
    lengths: dict[str, int] = {}  # tokens per word; a batch uses a few dozen distinct words
    rows = []
    for index, prompt in enumerate(prompts):
        words = prompt.caption().split()
        spans, position = [], 1  # position 0 is the start token; CLIP's BPE splits word by word
        for word in words:
            if word not in lengths:
                lengths[word] = len(tokenizer(word, add_special_tokens=False).input_ids)
            spans.append(range(position, position + lengths[word]))
            position += lengths[word]
        relation_words = prompt.relation.split()
        relation_at = words.index(relation_words[0])
        first_side, second_side = SIDES[prompt.relation]
        for k in range(relation_at, len(words)):
            first = k < relation_at + len(relation_words)  # the relation words describe the first object
            side, colour = (first_side, prompt.objects[0][0]) if first else (second_side, prompt.objects[1][0])
            rows += [(index, p, side, colours.index(colour)) for p in spans[k] if p < tokenizer.model_max_length]
    return tuple(torch.tensor(column) for column in zip(*rows))


def prompts_for_step(seed: int, step: int, n: int = PROMPTS_PER_STEP) -> list[Prompt]:
    """Training relation prompts of one step (deterministic, so a resumed run sees the same ones)."""
    train = prompts_of("train", "relation")
    return [train[i] for i in np.random.default_rng(seed * 7919 + step).integers(len(train), size=n)]


def side_loss(components, head: torch.nn.Linear, prompts: list[Prompt]) -> torch.Tensor:
    """Cross-entropy of the head's side and colour predictions on the target tokens."""
    caption_at, token_at, side, colour = side_targets(components.tokenizer, prompts)
    logits = head(components.encode_prompts([p.caption() for p in prompts])[caption_at, token_at])
    return F.cross_entropy(logits[:, :len(SIDE_NAMES)], side) + F.cross_entropy(logits[:, len(SIDE_NAMES):], colour)
