"""Writing outputs safely.

- :func:`check_output` validates an output path before any work: its folder exists, is a folder and
  can be written, and the output is not there yet unless ``overwrite``.
- :func:`claim` also locks the output for the whole operation, so that a second writer (another
  process, or another thread of a UI) is refused with a clear message instead of silently replacing
  the first one's file. Each wadi writer takes the lock, so under it "the output does not exist" stays
  true until we put it there.
- :func:`atomic_file` / :func:`atomic_dir` write to a temporary name beside the output and rename it
  into place; a killed process leaves at most that temporary, which the next writer of the same
  output removes (:func:`clean_leftovers`). A folder is replaced in two renames (the old one aside,
  the new one in); a kill between them leaves ``.NAME.old``, which the next writer puts back.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


class OutputError(ValueError):
    """An output path that cannot be written; the message names the path and the fix."""


class OutputExistsError(OutputError, FileExistsError):
    pass


class OutputBusyError(OutputError):
    """Another process (or thread) is writing the same output right now."""


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse, before any work, an output that exists (unless ``overwrite``) or cannot be written."""
    path = Path(path).expanduser()
    folder = path.parent
    if not folder.exists():
        raise OutputError(f"the folder {folder} for the output {path.name} does not exist; create it first")
    if not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder, so {path} cannot be written; choose another output "
                          "path")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, "
                                "or choose another output path")
    check_writable(folder)
    return path


def check_writable(folder: str | os.PathLike) -> Path:
    """Create and remove a file in ``folder``: the only test that tells (permissions, read-only disks, quotas)."""
    folder = Path(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".wadi-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"cannot write in {folder} ({err.strerror}); choose another output folder or fix its "
                          "permissions") from None
    return folder


def refuse_same_path(out: str | os.PathLike, inputs: Sequence[tuple[str, str | os.PathLike | None]],
                     inputs_may_be_inside: bool = False) -> None:
    """Refuse an output that is one of the inputs, lies inside an input folder or (unless
    ``inputs_may_be_inside``: a run folder that keeps its own prompt file) holds an input: writing it would
    destroy what is being read, ``--overwrite`` or not. ``inputs`` are ``(flag, path)`` pairs."""
    target = Path(out).expanduser().resolve()
    for flag, given in inputs:
        if not given:
            continue
        source = Path(given).expanduser().resolve()
        holds = target in source.parents and not inputs_may_be_inside
        if target == source or (source.is_dir() and source in target.parents) or holds:
            raise OutputError(f"the output {out} is the input {flag} {given} (or holds it); writing it would "
                              "destroy the input — choose another output path")


# --- locks ------------------------------------------------------------------------------------

_held = threading.local()  # {resolved path: [descriptor, holders]} of the locks this thread holds


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def _key(path: str | os.PathLike) -> str:
    path = Path(path).expanduser()
    return str(path.parent.resolve() / path.name)


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _busy(err: OSError) -> bool:
    return isinstance(err, BlockingIOError) or err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK,
                                                              errno.EDEADLK)


def _acquire(path: Path) -> int | None:
    """An open, locked descriptor of ``path``'s lock file; None where the file system cannot lock."""
    lock = _lock_path(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _try_lock(fd)
        except OSError as err:
            holder = ""
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(fd)
            if not _busy(err):
                return None  # e.g. a network file system without locks: go on unlocked, as before
            who = f" (process {holder})" if holder.isdigit() else ""
            raise OutputBusyError(f"{path} is being written by another wadi run{who}; wait for it to finish (or stop "
                                  "it), or choose another output path") from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same or os.name == "nt":
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _release(path: Path, fd: int | None) -> None:
    if fd is None:
        return
    if os.name != "nt":  # removed while still locked, so nobody locks a file that is going away
        try:
            os.unlink(_lock_path(path))
        except FileNotFoundError:
            pass
    _unlock(fd)
    os.close(fd)


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of one output (``.NAME.lock`` beside it) for the block; re-entrant within a thread.

    On first taking it, what a killed writer of the same output left behind is cleaned up."""
    path = Path(path).expanduser()
    held = _held.__dict__.setdefault("paths", {})
    key = _key(path)
    first = key not in held
    if first:
        held[key] = [_acquire(path), 0]  # [descriptor, holders]
    entry = held[key]
    entry[1] += 1
    try:
        if first:
            clean_leftovers(path)
        yield path
    finally:
        entry[1] -= 1
        if entry[1] == 0:  # the last holder releases, whatever order the holders leave in
            del held[key]
            _release(path, entry[0])


@contextmanager
def claim(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """:func:`check_output` and :func:`output_lock` for a whole operation: validate, lock, then check again
    under the lock (another run may have finished the same output meanwhile)."""
    path = check_output(path, overwrite)
    with output_lock(path):
        yield check_output(path, overwrite)


def _temporaries(path: Path) -> list[Path]:
    """The temporary names :func:`atomic_file` / :func:`atomic_dir` give to ``path``'s new versions."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean_leftovers(path: str | os.PathLike) -> None:
    """Remove the temporaries a killed writer of ``path`` left, and finish an interrupted folder swap: a
    ``.NAME.old`` whose replacement is in place is removed; one without it (the kill came between the two
    renames) is put back, so the last complete version is there again. Call it holding ``path``'s lock."""
    path = Path(path).expanduser()
    for tmp in _temporaries(path):
        _remove(tmp)
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        if path.exists():
            _remove(old)
        else:
            os.replace(old, path)


# --- writing ----------------------------------------------------------------------------------

def _refuse_newcomer(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:  # someone outside wadi's locks wrote it meanwhile
        raise OutputExistsError(f"{path} appeared while this run was writing it; nothing was replaced. Pass "
                                "--overwrite to replace it, or choose another output path")


@contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``."""
    path = check_output(path, overwrite)
    with output_lock(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            _refuse_newcomer(path, overwrite)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path``."""
    path = check_output(path, overwrite)
    with output_lock(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            if path.exists():
                _refuse_newcomer(path, overwrite)
                old = path.with_name(f".{path.name}.old")
                os.replace(path, old)
                os.replace(tmp, path)
                _remove(old)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)


def save_safetensors(tensors: Mapping[str, "torch.Tensor"], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None, overwrite: bool = False) -> Path:
    from safetensors.torch import save_file
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_file(path, overwrite) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata or {}))
    return Path(path)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    with atomic_file(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_png(image, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save a PIL image as PNG under a temporary name, then rename it into place."""
    with atomic_file(path, overwrite) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def refuse_pickle(path: Path, what: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path} is a pickle file; {what} are read only from .safetensors because pickle "
                         "can run code. Convert it to safetensors first (e.g. with safetensors.torch.save_file).")


def describe_os_error(err: OSError) -> str:
    """One sentence for an operating-system error met while working (disk full, permissions, a file where a
    folder should be), naming the path and what to do."""
    where = f" {err.filename}" if err.filename else ""
    hints = {
        errno.ENOSPC: "free some space or write to another disk",
        errno.EDQUOT: "free some space or write to another disk",
        errno.EACCES: "fix its permissions or choose another path",
        errno.EPERM: "fix its permissions or choose another path",
        errno.EROFS: "the disk is read-only; choose another path",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
        errno.EISDIR: "it is a folder where a file is expected; choose another path",
        errno.ENOENT: "check the path",
    }
    hint = hints.get(err.errno, "check the path and the disk")
    return f"{err.strerror or err}{' at' if where else ''}{where}; {hint}"


def remove_paths(paths: Sequence[Path]) -> None:
    """Remove each of ``paths`` that exists (files or folders)."""
    for p in paths:
        _remove(p)
