"""Models and files named on the Hugging Face Hub, as diffusers' ``from_pretrained`` takes them.

Every place that takes a model path or a weights file takes a Hub name too, when the path does not exist here:

- ``owner/name``, a diffusers pipeline: the parts wadi reads (``model_index.json`` and, in the part folders,
  configs, tokenizer files and ``.safetensors`` weights; no fp16 or non-EMA copies, no safety checker, no
  single-file checkpoints beside them) are downloaded into the Hub's cache (``HF_HOME``);
- ``owner/name/path/file.safetensors``, one file of a repository: a single-file checkpoint, a replacement UNet (the
  authors' ``gudaochangsheng/WaDi/rotated_unet-sdv1-5.safetensors``) or an adapter.

Later runs find them in the cache, offline too (``HF_HUB_OFFLINE=1``). Gated models need a login
(``hf auth login``) or ``HF_TOKEN``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

# owner/name: letters, digits and - _ . (the Hub's own rule); a file of it: the path in the repository after it
REPO = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
HUB_ID = re.compile(REPO)
HUB_FILE = re.compile(rf"(?P<repo>{REPO})/(?P<file>[A-Za-z0-9_.\-/]+\.safetensors)")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# the folders of a diffusers pipeline that wadi reads (SD1.x/2.x, SDXL, PixArt-alpha)
PARTS = ("unet", "transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
ALLOW_PATTERNS = ["model_index.json", *(f"{part}/*" for part in PARTS)]
IGNORE_PATTERNS = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb",
                   "*.ot", "*.xml", "*fp16*", "*non_ema*", "*.md"]


class HubError(ValueError):
    """A name on the Hub that names nothing wadi can read, or that cannot be fetched; the message says why and the
    fix."""


def hub_name(path: str | os.PathLike | None) -> tuple[str, str | None] | None:
    """``(repo id, file in it or None)`` when ``path`` names something on the Hub: ``owner/name`` or
    ``owner/name/.../file.safetensors`` that is not a file or folder here; else None."""
    if path is None:
        return None
    text = str(path)
    if ".." in text or Path(text).expanduser().exists():
        return None
    if HUB_ID.fullmatch(text) and not text.lower().endswith(CHECKPOINT_SUFFIXES):
        return text, None
    found = HUB_FILE.fullmatch(text)
    return (found["repo"], found["file"]) if found else None


def is_hub_name(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` names a Hub repository or a file of one (and is not a path here)."""
    return hub_name(path) is not None


def local_path(path: str | os.PathLike | None) -> str | os.PathLike | None:
    """``path`` itself, or for a Hub name the folder or file in the Hub's cache (downloading what is missing
    first, with progress bars)."""
    name = hub_name(path)
    if name is None:
        return path
    repo_id, file = name
    return _download(repo_id, file) if file else _snapshot(repo_id)


@functools.cache
def _snapshot(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    folder = _fetched(repo_id, None, lambda progress: snapshot_download(
        repo_id, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS, tqdm_class=progress))
    if not (Path(folder) / "model_index.json").is_file():
        raise HubError(f"{repo_id} on the Hugging Face Hub is not a diffusers pipeline (no model_index.json); give a "
                       "diffusers model id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5), or one file of it as "
                       f"{repo_id}/FILE.safetensors")
    return folder


@functools.cache
def _download(repo_id: str, file: str) -> str:
    from huggingface_hub import hf_hub_download

    return _fetched(repo_id, file, lambda progress: hf_hub_download(repo_id, file, tqdm_class=progress))


def _fetched(repo_id: str, file: str | None, download) -> str:
    """``download(progress bar class)``, its failures said in one sentence with the fix."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from tqdm.auto import tqdm

    here = f"{repo_id}/{file} is not a file here" if file else f"{repo_id} is not a file or folder here"
    try:  # tqdm's own bars: a download of gigabytes shows its progress, whatever hides the model-loading bars
        return download(tqdm)
    except GatedRepoError as err:
        raise HubError(f"{repo_id} is gated on the Hugging Face Hub: accept its licence on its page, then log in "
                       "(hf auth login) or set HF_TOKEN") from err
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise HubError(f"{here}, and the Hugging Face Hub has no model {repo_id} (or it is private: log in with "
                       "hf auth login); check the path or the id") from err
    except LocalEntryNotFoundError as err:  # no connection (or HF_HUB_OFFLINE=1), and not in the cache
        raise _unreachable(here, err) from err
    except EntryNotFoundError as err:
        raise HubError(f"{here}, and {repo_id} on the Hugging Face Hub has no file {file}; check the file's path "
                       "in the repository") from err
    except Exception as err:  # a partial copy, a lost connection in the middle of a download
        raise _unreachable(here, err) from err


def _unreachable(here: str, err: BaseException) -> HubError:
    return HubError(f"{here}, and the Hugging Face Hub could not give it ({type(err).__name__}: "
                    f"{first_sentence(err)}); check the path, or run the command once where there is a network and "
                    "copy its Hub cache (HF_HOME) here")


def first_sentence(err: BaseException) -> str:
    """The first line's first sentence of an error's message (huggingface_hub's run to a paragraph)."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line.split(". ")[0].rstrip(".")[:240]
