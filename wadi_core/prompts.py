"""Prompt files: one prompt per line, or JSONL with a ``caption`` (or ``prompt``/``text``) field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from . import fileio


class PromptFileError(ValueError):
    pass


def read_text(path: str | os.PathLike, what: str = "prompt file") -> str:
    """The UTF-8 text of a file people write by hand, or one clear error: missing, a folder, binary, or in
    another encoding (with the line of the first bad byte)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PromptFileError(f"{what} {path} is a folder; give a text file with one entry per line")
    if not path.is_file():
        raise PromptFileError(f"{what} {path} does not exist; give a text file with one entry per line")
    data = path.read_bytes()
    if b"\0" in data:
        raise PromptFileError(f"{what} {path} is a binary file, not text; give a text file with one entry per line")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise PromptFileError(f"{what} {path} is not UTF-8 text (line {line} has the byte 0x{data[err.start]:02x}); "
                              "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_prompts(path: str | os.PathLike) -> list[str]:
    path = Path(path).expanduser()
    text = read_text(path)
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
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
