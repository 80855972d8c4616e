"""Prompt files: one prompt per line, or JSONL with a ``caption`` (or ``prompt``/``text``) field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from . import fileio


class PromptFileError(ValueError):
    pass


def read_prompts(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist; give a text file with one prompt per line")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptFileError(f"{path}:{number} is not valid JSON ({err.msg})") from None
            text = next((record[k] for k in ("caption", "prompt", "text") if isinstance(record.get(k), str)), None)
            if text is None:
                raise PromptFileError(f"{path}:{number} has no 'caption' field")
            line = text.strip()
        prompts.append(line)
    if not prompts:
        raise PromptFileError(f"prompt file {path} holds no prompts; write one prompt per line")
    return prompts


def write_prompts(path: str | os.PathLike, prompts: Iterable[str], overwrite: bool = False) -> Path:
    prompts = [p.strip() for p in prompts]
    if not prompts or any(not p or "\n" in p for p in prompts):
        raise PromptFileError("prompts to write must be non-empty single lines")
    with fileio.atomic_file(path, overwrite) as tmp:
        tmp.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return Path(path)
