"""Models and files named on the Hugging Face Hub, as diffusers' ``from_pretrained`` takes them.

Every place that takes a model path or a weights file takes a Hub name too, when the path does not exist here:

- ``owner/name``, a diffusers pipeline: the parts wadi reads (``model_index.json`` and, in the part folders,
  configs, tokenizer files and ``.safetensors`` weights; no fp16 or non-EMA copies, no safety checker, no
  single-file checkpoints beside them) are downloaded into the Hub's cache (``HF_HOME``);
- ``owner/name/path/file.safetensors``, one file of a repository: a single-file checkpoint, a replacement UNet (the
  authors' ``gudaochangsheng/WaDi/rotated_unet-sdv1-5.safetensors``) or an adapter;
- either at a revision (a branch, a tag or a commit), as huggingface_hub's file system writes it:
  ``owner/name@REVISION`` and ``owner/name@REVISION/path/file.safetensors``; without one, the main branch.

Later runs find them in the cache, offline too (``HF_HUB_OFFLINE=1``). Gated models need a login
(``hf auth login``) or ``HF_TOKEN``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import NamedTuple

# owner/name: letters, digits and - _ . (the Hub's own rule); a file of it: the path in the repository after it
# (a branch, tag or commit after @; a branch with / in its name is not taken)
REPO = r"(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})(?:@(?P<revision>[A-Za-z0-9_.-]+))?"
HUB_ID = re.compile(REPO)
HUB_FILE = re.compile(rf"{REPO}/(?P<file>[A-Za-z0-9_.\-/]+\.safetensors)")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# the folders of a diffusers pipeline that wadi reads (SD1.x/2.x, SDXL, PixArt-alpha)
PARTS = ("unet", "transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
ALLOW_PATTERNS = ["model_index.json", *(f"{part}/*" for part in PARTS)]
# a pipeline's backbone weights, not fetched when a replacement file is given (--unet)
BACKBONE_WEIGHTS = ["unet/diffusion_pytorch_model*", "transformer/diffusion_pytorch_model*"]
# a tokenizer's files in a repository (CLIP's for single files, which carry none)
VOCABULARY_FILES = ["vocab.json", "merges.txt", "tokenizer.json"]  # one of them makes a tokenizer folder
TOKENIZER_FILES = [*VOCABULARY_FILES, "tokenizer_config.json", "special_tokens_map.json"]
IGNORE_PATTERNS = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb",
                   "*.ot", "*.xml", "*fp16*", "*non_ema*", "*.md"]


class HubError(ValueError):
    """A name on the Hub that names nothing wadi can read, or that cannot be fetched; the message says why and the
    fix."""


class HubName(NamedTuple):
    """A repository on the Hub, a file in it (None: the whole pipeline) and a revision (None: the main branch)."""

    repo: str
    file: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{self.repo}{at}/{self.file}" if self.file else f"{self.repo}{at}"


def hub_name(path: str | os.PathLike | None) -> HubName | None:
    """What ``path`` names on the Hub when it is ``owner/name[@REVISION]`` or
    ``owner/name[@REVISION]/.../file.safetensors`` and not a file or folder here; else None."""
    if path is None:
        return None
    text = str(path)
    if ".." in text or Path(text).expanduser().exists():
        return None
    found = HUB_ID.fullmatch(text)
    if found and not text.lower().endswith(CHECKPOINT_SUFFIXES):
        return HubName(found["repo"], None, found["revision"])
    found = HUB_FILE.fullmatch(text)
    return HubName(found["repo"], found["file"], found["revision"]) if found else None


def is_hub_name(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` names a Hub repository or a file of one (and is not a path here)."""
    return hub_name(path) is not None


def local_path(path: str | os.PathLike | None, backbone_weights: bool = True) -> str | os.PathLike | None:
    """``path`` itself, or for a Hub name the folder or file in the Hub's cache (downloading what is missing
    first, with progress bars). ``backbone_weights=False``: a pipeline's UNet or transformer weights are not
    downloaded (a replacement file takes their place; the configuration still is)."""
    name = hub_name(path)
    if name is None:
        return path
    return _download(name) if name.file else _snapshot(name, backbone_weights)


@functools.cache
def _snapshot(name: HubName, backbone_weights: bool = True) -> str:
    from huggingface_hub import snapshot_download

    ignore = IGNORE_PATTERNS if backbone_weights else [*IGNORE_PATTERNS, *BACKBONE_WEIGHTS]
    folder = _fetched(name, lambda progress: snapshot_download(
        name.repo, revision=name.revision, allow_patterns=ALLOW_PATTERNS, ignore_patterns=ignore,
        tqdm_class=progress))
    if not (Path(folder) / "model_index.json").is_file():
        raise HubError(f"{name.repo} on the Hugging Face Hub is not a diffusers pipeline (no model_index.json); give "
                       "a diffusers model id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5), or one file of it as "
                       f"{name.repo}/FILE.safetensors")
    return folder


@functools.cache
def _download(name: HubName) -> str:
    from huggingface_hub import hf_hub_download

    return _fetched(name, lambda progress: hf_hub_download(name.repo, name.file, revision=name.revision,
                                                            tqdm_class=progress))


@functools.cache
def tokenizer_folder(repo_id: str) -> str:
    """The folder of ``repo_id``'s tokenizer files (:data:`TOKENIZER_FILES`) in the Hub's cache: without a network
    call when they are there, else downloaded (a few MB)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    def fetch(progress=None, local=False):
        return snapshot_download(repo_id, allow_patterns=TOKENIZER_FILES, local_files_only=local, tqdm_class=progress)

    try:
        folder = fetch(local=True)
    except LocalEntryNotFoundError:  # not in the cache: ask the Hub
        folder = None
    if folder and any((Path(folder) / name).is_file() for name in VOCABULARY_FILES):
        return folder
    return _fetched(HubName(repo_id), fetch)


def _fetched(name: HubName, download) -> str:
    """``download(progress bar class)``, its failures said in one sentence with the fix."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from tqdm.auto import tqdm

    here = f"{name} is not a file here" if name.file else f"{name} is not a file or folder here"
    try:  # tqdm's own bars: a download of gigabytes shows its progress, whatever hides the model-loading bars
        return download(tqdm)
    except GatedRepoError as err:
        raise HubError(f"{name.repo} is gated on the Hugging Face Hub: accept its licence on its page, then log in "
                       "(hf auth login) or set HF_TOKEN") from err
    except RevisionNotFoundError as err:
        raise HubError(f"{here}, and {name.repo} on the Hugging Face Hub has no revision {name.revision}; check the "
                       "branch, tag or commit after @") from err
    except RepositoryNotFoundError as err:
        raise HubError(f"{here}, and the Hugging Face Hub has no model {name.repo} (or it is private: log in with "
                       "hf auth login); check the path or the id") from err
    except LocalEntryNotFoundError as err:  # no connection (or HF_HUB_OFFLINE=1), and not in the cache
        raise _unreachable(here, err) from err
    except EntryNotFoundError as err:
        raise HubError(f"{here}, and {name.repo} on the Hugging Face Hub has no file {name.file}"
                       f"{' at ' + name.revision if name.revision else ''}; check the file's path in the repository"
                       ) from err
    except Exception as err:  # a partial copy, a lost connection in the middle of a download
        raise _unreachable(here, err) from err


def _unreachable(here: str, err: BaseException) -> HubError:
    return HubError(f"{here}, and the Hugging Face Hub could not give it ({reason(err)}); check the path, or run the "
                    "command once where there is a network and copy its Hub cache (HF_HOME) here")


def reason(err: BaseException) -> str:
    """An error's kind and first sentence, to say in parentheses why something could not be fetched."""
    return f"{type(err).__name__}: {first_sentence(err)}"


def first_sentence(err: BaseException) -> str:
    """The first line's first sentence of an error's message (huggingface_hub's run to a paragraph)."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line.split(". ")[0].rstrip(".")[:240]
