"""ReVersion: learn a relation token ``<R>`` from exemplar images, against the multi-step teacher.

Only the token's input embedding trains. Its loss (ReVersion, Huang et al. 2023):
- denoising: the teacher's epsilon error on the exemplars, captions carrying ``<R>``, timesteps drawn
  with *relation-focal importance sampling* (``p(t) ~ 1 - alpha cos(pi t / T)``: more high-noise
  steps, where layout and relations are decided);
- relation steering: an InfoNCE loss (temperature 0.07) pulling ``<R>`` towards prepositions
  (positives, a few drawn per step) and away from the caption's entity words (negatives).
The learned token then works with the teacher and, unchanged, with the one-step student, which
shares the teacher's text encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .images import read_image_folder
from .models.embeddings import EmbeddingError, add_token, embedding_table
from .models.vae import encode

PREPOSITIONS = ("in", "on", "at", "of", "above", "below", "inside", "under", "over", "behind", "beside", "between",
                "near", "into", "onto", "within", "among", "around", "across", "along", "against", "beneath",
                "underneath", "upon", "by", "with", "from", "through", "toward", "outside", "left", "right",
                "next", "before", "after", "beyond", "past", "off")
STOP_WORDS = ("a", "an", "the", "and", "to", "is", "are", "top", "bottom", "center")


@dataclass(frozen=True)
class ReVersionConfig:
    token: str = "<R>"
    init: str = "in"
    steps: int = 400
    batch_size: int = 8
    lr: float = 5e-3
    steer_weight: float = 0.01
    temperature: float = 0.07
    positives: int = 4
    importance_alpha: float = 0.5
    seed: int = 0


@dataclass
class Exemplars:
    images: np.ndarray  # uint8 [n, H, W, 3]
    captions: list[list[str]]  # per image, its captions (each with the token)


def read_exemplars(folder: str | Path, token: str, size: int) -> Exemplars:
    """Images and ``text.json`` (image name -> caption or captions with ``token``), ReVersion's layout."""
    folder = Path(folder).expanduser()
    names, images = read_image_folder(folder, size)
    text_file = folder / "text.json"
    if not text_file.is_file():
        raise FileNotFoundError(f"{text_file} is missing; write a text.json mapping each image name to captions "
                                f"with {token}, e.g. {{\"{names[0]}\": [\"a cat {token} a basket\"]}}")
    try:
        table = json.loads(text_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{text_file} is not valid JSON ({err})") from None
    if not isinstance(table, dict):
        raise ValueError(f"{text_file} must map image names to captions (a JSON object)")
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ValueError(f"{text_file} names '{unknown[0]}', which is not an image in {folder}; "
                         "make text.json and the images match")
    captions = []
    for name in names:
        entry = table.get(name)
        if entry is None:
            raise ValueError(f"{name} has no captions in {text_file}; add \"{name}\": [\"... {token} ...\"]")
        entry = [entry] if isinstance(entry, str) else list(entry)
        bad = [c for c in entry if token not in c]
        if not entry or bad:
            raise ValueError(f"{text_file}: the captions of {name} must each contain {token} "
                             f"(got '{bad[0] if bad else ''}')")
        captions.append(entry)
    return Exemplars(images, captions)


def relation_timesteps(n: int, num_train_timesteps: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Relation-focal importance sampling: ``p(t) ~ 1 - alpha cos(pi t / T)``, favouring large t."""
    t = torch.arange(num_train_timesteps, dtype=torch.float64)
    weights = 1 - alpha * torch.cos(torch.pi * t / num_train_timesteps)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def steering_loss(anchor: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                  temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE with several positives: ``-log(sum_pos exp(s/T) / sum_all exp(s/T))``, ``s`` the cosine
    similarity to ``anchor``; only ``anchor`` receives gradients."""
    bank = F.normalize(torch.cat([positives, negatives]).detach(), dim=-1)
    logits = bank @ F.normalize(anchor, dim=-1) / temperature
    return torch.logsumexp(logits, 0) - torch.logsumexp(logits[: len(positives)], 0)


def single_token_ids(components, words, exclude: set[int]) -> list[int]:
    out = []
    for word in words:
        pieces = components.tokenizer.tokenize(word)
        ids = components.tokenizer.convert_tokens_to_ids(pieces)
        if len(ids) == 1 and ids[0] not in exclude and ids[0] not in out:
            out.append(ids[0])
    return out


def train_relation(components, exemplars: Exemplars, config: ReVersionConfig,
                   progress: Callable[[int, dict], None] | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Learn ``config.token`` on ``components`` (the teacher, frozen). Returns ``(vector, history)``; the
    token stays in ``components`` with its learned embedding."""
    if config.steps < 1 or config.batch_size < 1:
        raise ValueError("steps and batch size must be positive")
    token_id = add_token(components, config.token, config.init)
    special = {components.tokenizer.bos_token_id, components.tokenizer.eos_token_id, token_id}
    positive_ids = single_token_ids(components, PREPOSITIONS, special)
    if not positive_ids:
        raise EmbeddingError("none of the prepositions is a single token of this tokenizer; the steering loss "
                             "needs them")
    stop_ids = set(single_token_ids(components, PREPOSITIONS + STOP_WORDS, set())) | special
    table = embedding_table(components)
    table.weight.requires_grad_(True)
    only_new_row = torch.zeros(table.weight.shape[0], 1)
    only_new_row[token_id] = 1.0
    hook = table.weight.register_hook(lambda grad: grad * only_new_row.to(grad))
    original = table.weight.detach().clone()
    optimizer = torch.optim.AdamW([table.weight], lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    unet, scheduler = components.unet, components.scheduler
    history = []
    try:
        for step in range(config.steps):
            pick = rng.integers(len(exemplars.images), size=config.batch_size)
            captions = [exemplars.captions[i][rng.integers(len(exemplars.captions[i]))] for i in pick]
            latents = encode(components, exemplars.images[pick], generator)
            noise = torch.randn(latents.shape, generator=generator)
            t = relation_timesteps(len(pick), scheduler.config.num_train_timesteps, config.importance_alpha,
                                   generator)
            noisy = scheduler.add_noise(latents, noise, t)
            eps = unet(noisy, t, components.encode_prompts(captions)).sample
            denoise = F.mse_loss(eps.float(), noise)
            ids = components.tokenizer(captions, add_special_tokens=False).input_ids
            entities = sorted({i for row in ids for i in row if i not in stop_ids})
            chosen = rng.choice(positive_ids, size=min(config.positives, len(positive_ids)), replace=False)
            steer = steering_loss(table.weight[token_id], table.weight[torch.as_tensor(chosen)],
                                  table.weight[torch.as_tensor(entities or [components.tokenizer.eos_token_id])],
                                  config.temperature)
            loss = denoise + config.steer_weight * steer
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # every other row stays exactly as it was
                keep = only_new_row.to(table.weight) == 0
                table.weight.copy_(torch.where(keep, original.to(table.weight), table.weight))
            record = {"step": step + 1, "loss": loss.item(), "denoise": denoise.item(), "steer": steer.item()}
            history.append(record)
            if progress:
                progress(step + 1, record)
    finally:
        hook.remove()
        table.weight.requires_grad_(False)
    return table.weight[token_id].detach().clone(), history
