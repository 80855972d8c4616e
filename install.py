"""Install what WaDi needs into the host's Python; ComfyUI-Manager and A1111/Forge run this file.

It installs only requirements that are missing or too old, and never installs or upgrades torch
(the host's own build, often CUDA-specific, must stay). `python install.py --dry-run` only lists.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().with_name("requirements.txt")
NEVER = {"torch", "torchvision", "torchaudio"}


def read_requirements(path: Path = REQUIREMENTS) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _name_and_ok(spec: str) -> tuple[str, bool]:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # very old hosts: fall back to "is it installed at all"
        name = spec.split(">")[0].split("=")[0].split("<")[0].strip()
        try:
            metadata.version(name)
            return name, True
        except metadata.PackageNotFoundError:
            return name, False
    req = Requirement(spec)
    try:
        return req.name, req.specifier.contains(metadata.version(req.name), prereleases=True)
    except metadata.PackageNotFoundError:
        return req.name, False


def missing(specs: list[str]) -> list[str]:
    todo = []
    for spec in specs:
        name, ok = _name_and_ok(spec)
        if name.lower() not in NEVER and not ok:
            todo.append(spec)
    return todo


def main(argv: list[str]) -> int:
    todo = missing(read_requirements())
    if not todo:
        print("[WaDi] all requirements are installed")
        return 0
    print(f"[WaDi] installing: {' '.join(todo)}")
    if "--dry-run" in argv:
        return 0
    return subprocess.call([sys.executable, "-m", "pip", "install", *todo])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
