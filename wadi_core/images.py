"""Writing images people look at: numbered PNGs and labelled grids."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8 [n, H, W, 3]`` -> float ``[n, 3, H, W]`` in [-1, 1], the range SD models use."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def read_image(path, what: str = "image") -> Image.Image:
    """One RGB image, or one clear error naming the file (missing, a folder, or not an image at all)."""
    path = Path(path).expanduser()
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"the {what} {path} {state}; give a PNG or JPEG file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError or ValueError for broken files
        raise ValueError(f"the {what} {path} is not a readable image ({type(err).__name__}: {err}); give a PNG or "
                         "JPEG file") from None


def read_image_folder(folder, size: int, min_count: int = 1) -> tuple[list[str], np.ndarray]:
    """``(file names, uint8 [n, size, size, 3])``: every image in ``folder`` by name, centre-cropped
    to a square and resized."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; give a folder of PNG or JPEG images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < min_count:
        raise ValueError(f"{folder} holds {len(files)} images (.png, .jpg, .jpeg, .webp) but at least {min_count} "
                         "are needed; put the images there")
    out = []
    for path in files:
        image = read_image(path)
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        out.append(np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)))
    return [p.name for p in files], np.stack(out)


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "image"


def save_pngs(images: np.ndarray, prompts: Sequence[str], folder: Path, seeds: Sequence[int]) -> list[Path]:
    paths = []
    for i, (image, prompt, seed) in enumerate(zip(images, prompts, seeds)):
        path = folder / f"{i:04d}_{slug(prompt)}_s{seed}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def labelled_grid(images: np.ndarray, labels: Sequence[str], columns: int = 8, cell: int = 128,
                  label_lines: int = 3) -> Image.Image:
    """Images upscaled to ``cell`` pixels (nearest, so small images stay crisp) with captions."""
    font = ImageFont.load_default()
    line_h = 11
    rows = (len(images) + columns - 1) // columns
    height = cell + label_lines * line_h + 4
    grid = Image.new("RGB", (columns * cell, rows * height), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * cell, (i // columns) * height
        grid.paste(Image.fromarray(image).resize((cell, cell), Image.NEAREST), (x, y))
        for j, line in enumerate(textwrap.wrap(label, width=max(8, cell // 6))[:label_lines]):
            draw.text((x + 2, y + cell + 2 + j * line_h), line, fill="black", font=font)
    return grid


def side_by_side(columns: dict[str, np.ndarray], labels: Sequence[str], cell: int = 96) -> Image.Image:
    """One row per prompt, one column per named image set (e.g. teacher 25 steps | student 1 step)."""
    font = ImageFont.load_default()
    names = list(columns)
    label_w, head_h = 220, 16
    n = len(labels)
    grid = Image.new("RGB", (label_w + cell * len(names), head_h + n * cell), "white")
    draw = ImageDraw.Draw(grid)
    for k, name in enumerate(names):
        draw.text((label_w + k * cell + 4, 2), name, fill="black", font=font)
    for i, label in enumerate(labels):
        y = head_h + i * cell
        for j, line in enumerate(textwrap.wrap(label, width=34)[:4]):
            draw.text((4, y + 4 + j * 11), line, fill="black", font=font)
        for k, name in enumerate(names):
            grid.paste(Image.fromarray(columns[name][i]).resize((cell, cell), Image.NEAREST), (label_w + k * cell, y))
    return grid


def write_images(out, images: np.ndarray, prompts: Sequence[str], seeds: Sequence[int], overwrite: bool = False,
                 labels: Sequence[str] | None = None) -> Path:
    """A folder of numbered PNGs and their ``grid.png`` (labelled with ``labels``, default the prompts), written
    under a temporary name and renamed into place."""
    from . import fileio

    with fileio.atomic_dir(out, overwrite) as tmp:
        save_pngs(images, prompts, tmp, seeds)
        labelled_grid(images, list(labels) if labels is not None else list(prompts)).save(tmp / "grid.png")
    return Path(out)
