"""The outputs a command writes are claimed for its whole run (checked, then locked), so that a second
run writing the same path is refused at once instead of replacing the first one's result at the end; and
an output that is one of the command's inputs is refused, ``--overwrite`` or not."""

from __future__ import annotations

import functools
from contextlib import ExitStack
from pathlib import Path

from wadi_core import fileio


def input_paths(args, outputs: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(flag, path)`` of every argument that names an existing file or folder (``FILE:STRENGTH`` included),
    the defaults too (the embedded model must not be overwritten by a stray ``--out``)."""
    found = []
    for name, value in vars(args).items():
        if name in outputs:
            continue
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or not item:
                continue
            for candidate in (item, item.rpartition(":")[0]):
                if candidate and Path(candidate).expanduser().exists():
                    found.append((f"--{name.replace('_', '-')}", candidate))
                    break
    return found


def writes(*names: str):
    """Decorate a command's ``run(args)``: claim each ``args.NAME`` that is set, with ``args.overwrite``."""
    def decorate(run):
        @functools.wraps(run)
        def claimed(args):
            inputs = input_paths(args, names)
            with ExitStack() as stack:
                for name in names:
                    path = getattr(args, name, None)
                    if path:
                        fileio.refuse_same_path(path, inputs)
                        stack.enter_context(fileio.claim(path, getattr(args, "overwrite", False)))
                return run(args)
        return claimed
    return decorate
