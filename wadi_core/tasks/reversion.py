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
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import fileio
from ..images import labelled_grid, read_image_folder
from ..models import decode, embeddings, family_of_path
from ..models.embeddings import EmbeddingError, add_token, embedding_table
from ..models.vae import encode
from ..plots import loss_curves
from ..progress import QUIET, Progress
from ..sampling import MultiStep, OneStep, build_generator, image_size
from ..sampling.prediction import denoising_target

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
            # drawn on the CPU (the same numbers on every device), then moved to the model's
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
            t = relation_timesteps(len(pick), scheduler.config.num_train_timesteps, config.importance_alpha,
                                   generator).to(latents.device)
            noisy = scheduler.add_noise(latents, noise, t)
            out = unet(noisy, t, components.encode_prompts(captions)).sample
            denoise = F.mse_loss(out.float(), denoising_target(scheduler, latents, noise, t))
            ids = components.tokenizer(captions, add_special_tokens=False).input_ids
            entities = sorted({i for row in ids for i in row if i not in stop_ids})
            chosen = rng.choice(positive_ids, size=min(config.positives, len(positive_ids)), replace=False)
            rows = table.weight.device
            steer = steering_loss(table.weight[token_id], table.weight[torch.as_tensor(chosen, device=rows)],
                                  table.weight[torch.as_tensor(entities or [components.tokenizer.eos_token_id],
                                                               device=rows)],
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


# ----- a whole run: exemplars, training, the token files and their pictures

@dataclass
class RelationRun:
    embedding: Path  # reversion.safetensors
    textual_inversion: Path  # embeddings/NAME.safetensors, the file ComfyUI and A1111 load
    minutes: float


def train(model, out: str | os.PathLike, config: ReVersionConfig, exemplars=None, relation: str = "larger",
          count: int = 12, name: str = "wadi_relation", overwrite: bool = False,
          progress: Progress = QUIET, backbone=None, device=None) -> RelationRun:
    """Learn ``config.token`` from the exemplars in ``exemplars`` (a folder of images and text.json), or from
    renders of an embedded relation the captions never name; write ``out``: reversion.safetensors,
    embeddings/NAME.safetensors, history.json, loss.png and samples.png. Training and samples run on ``device``
    (as ``build_generator`` takes it; None: the CPU), in float32."""
    from ..shapes import novel

    with fileio.claim(out, overwrite) as out:
        teacher = build_generator(model, backbone=backbone, device=device).components
        size = image_size(teacher)
        novel_relation = None if exemplars else novel.novel_relation(relation)
        with fileio.atomic_dir(out, overwrite) as tmp:
            if exemplars:
                folder = Path(exemplars)
            else:
                if family_of_path(model) != "shapes":
                    raise ValueError("a real teacher needs --exemplars (a folder of images and text.json)")
                folder = novel.write_relation_exemplars(tmp / "exemplars", novel_relation.name, count, config.seed,
                                                        config.token)
            found = read_exemplars(folder, config.token, size)
            start = time.perf_counter()
            with progress.steps(config.steps, f"ReVersion {config.token}", ("denoise", "steer")) as step:
                vector, history = train_relation(teacher, found, config, step)
            minutes = (time.perf_counter() - start) / 60
            meta = {"wadi.init": config.init, "wadi.relation": novel_relation.name if novel_relation else "",
                    "wadi.base": str(model), "wadi.steps": str(config.steps),
                    "wadi.steer_weight": str(config.steer_weight), "wadi.exemplars": str(len(found.images))}
            embeddings.save_embedding(vector, tmp / "reversion.safetensors", config.token, meta)
            (tmp / "embeddings").mkdir()
            embeddings.save_textual_inversion(vector, tmp / "embeddings" / f"{name}.safetensors")
            (tmp / "history.json").write_text(json.dumps(history))
            loss_curves({"denoising": [h["denoise"] for h in history],
                         f"steering x {config.steer_weight}": [h["steer"] * config.steer_weight for h in history]},
                        tmp / "loss.png", title=f"ReVersion {config.token}")
            progress.note("drawing the sample grid")
            captions = [c[0] for c in found.captions[:8]]
            images = MultiStep(25, 3.0)(teacher, captions, list(range(len(captions))))
            labelled_grid(np.concatenate([found.images[:8], images]),
                          [f"exemplar: {c}" for c in captions] + [f"teacher: {c}" for c in captions]).save(
                tmp / "samples.png")
    return RelationRun(out / "reversion.safetensors", out / "embeddings" / f"{name}.safetensors", minutes)


# ----- evaluation on an embedded relation

def vae_round_trip(components, relation, pairs, seed: int) -> np.ndarray:
    """Renders of the relation for ``pairs``, encoded and decoded by the model's VAE: the best any model drawing
    through this VAE can be judged to do."""
    from ..shapes import novel
    from ..shapes.render import render

    rng = np.random.default_rng([seed, 3])
    renders = np.stack([np.asarray(render(novel.Scene(relation.scene(a, b, rng), "black", ""))) for a, b in pairs])
    return decode(components, encode(components, renders))


def evaluate(embedding, out: str | os.PathLike, model=None, student=None, count: int = 64, steps: int = 25,
             guidance: float = 3.0, baseline: str | None = None, seed: int = 0, overwrite: bool = False,
             report: Callable[[str], None] = lambda text: None, backbone=None) -> dict:
    """How often the embedded relation a token was learned on holds in images of new entity pairs: the teacher
    (``steps`` DDIM steps) and, with ``student``, the one-step student, each with the token and with the baseline
    word (default: the token's initialiser); writes metrics.json and grid.png to ``out``."""
    from ..shapes import novel

    meta = embeddings.read_embedding(embedding)[2]
    if not meta.get("wadi.relation"):
        raise ValueError(f"{embedding} was not learned on an embedded relation "
                         f"({', '.join(novel.NOVEL_RELATIONS)}); reversion-eval measures those only")
    with fileio.claim(out, overwrite) as out:
        relation = novel.novel_relation(meta["wadi.relation"])
        baseline = baseline or meta.get("wadi.init") or relation.init
        rng = np.random.default_rng(seed)
        pool = relation.pairs("new")
        pairs = [pool[i] for i in rng.integers(len(pool), size=count)]
        seeds = [seed + i for i in range(count)]
        rows, grid, labels = {}, [], []
        teacher = build_generator(model, embeddings=[embedding], backbone=backbone)  # loaded once: ceiling, rows, swap
        (token,) = teacher.tokens
        ceiling = vae_round_trip(teacher.components, relation, pairs, seed)
        rows["renders through the VAE (the ceiling)"] = best = novel.relation_accuracy(relation.name, ceiling, pairs)
        report(f"renders through the VAE: '{relation.name}' holds {best['holds']:.1%}")
        models = [("teacher", teacher, MultiStep(steps, guidance))]
        if student:
            models.append(("student", build_generator(model, [(student, 1.0)], [embedding], backbone=backbone),
                           OneStep()))
        drawn = {}
        for name, generator, sampler in models:
            for word in (token, baseline):
                prompts = [novel.relation_caption(first, second, word) for first, second in pairs]
                start = time.perf_counter()
                images = generator(prompts, seeds, sampler)
                seconds = time.perf_counter() - start
                label = f"{name} ({'1 step' if name == 'student' else f'{steps} steps'}), '{word}'"
                rows[label] = {**novel.relation_accuracy(relation.name, images, pairs),
                               "ms_per_image": 1000 * seconds / len(prompts)}
                report(f"{label}: '{relation.name}' holds {rows[label]['holds']:.1%}, both shapes "
                       f"{rows[label]['both']:.1%}")
                grid.append(images[:8])
                labels += [f"{label}: {p}" for p in prompts[:8]]
                drawn[name, word] = images.astype(np.float32)
        # Does the teacher read the word between the two entities at all? Pixel change from swapping it.
        opposite = [teacher([novel.relation_caption(a, b, word) for a, b in pairs], seeds,
                            MultiStep(steps, guidance)).astype(np.float32) for word in ("left of", "right of")]
        learned = np.abs(drawn["teacher", token] - drawn["teacher", baseline]).mean()
        sensitivity = {"'left of' vs 'right of'": float(np.abs(opposite[0] - opposite[1]).mean()),
                       f"'{token}' vs '{baseline}'": float(learned)}
        report("teacher, mean pixel change (0-255) from the word between the entities: "
               + ", ".join(f"{k}: {v:.2f}" for k, v in sensitivity.items()))
        summary = {"relation": relation.name, "prompts": count, "results": rows, "teacher_pixel_change": sensitivity}
        with fileio.atomic_dir(out, overwrite) as tmp:
            (tmp / "metrics.json").write_text(json.dumps(summary, indent=1))
            labelled_grid(np.concatenate(grid), labels).save(tmp / "grid.png")
    return summary
