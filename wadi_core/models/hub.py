"""Models named by their Hugging Face Hub id (``owner/name``), as diffusers' ``from_pretrained`` takes them.

Every place that takes a model path takes an id too: a path that does not exist here and reads as ``owner/name``
is looked up on the Hub, and the parts wadi reads of a diffusers pipeline (``model_index.json`` and, in the part
folders, configs, tokenizer files and ``.safetensors`` weights; no fp16 or non-EMA copies, no safety checker, no
single-file checkpoints beside them) are downloaded once into the Hub's cache (``HF_HOME``). Later runs find them
there, offline too (``HF_HUB_OFFLINE=1``). Gated models need a login (``hf auth login``) or ``HF_TOKEN``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

# owner/name: letters, digits and - _ . (the Hub's own rule), one slash, no file suffix of a checkpoint
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# the folders of a diffusers pipeline that wadi reads (SD1.x/2.x, SDXL, PixArt-alpha)
PARTS = ("unet", "transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
ALLOW_PATTERNS = ["model_index.json", *(f"{part}/*" for part in PARTS)]
IGNORE_PATTERNS = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb",
                   "*.ot", "*.xml", "*fp16*", "*non_ema*", "*.md"]


class HubError(ValueError):
    """A Hub id that names no model wadi can read, or that cannot be fetched; the message says why and the fix."""


def is_hub_id(path: str | os.PathLike) -> bool:
    """``owner/name`` that is not a file or folder here."""
    text = str(path)
    return (HUB_ID.fullmatch(text) is not None and not text.lower().endswith(CHECKPOINT_SUFFIXES)
            and ".." not in text and not Path(text).expanduser().exists())


def resolve_model(path: str | os.PathLike | None) -> str | os.PathLike | None:
    """``path`` itself, or for a Hub id its folder in the Hub's cache (downloading what is missing first, with
    progress bars)."""
    if path is None or not is_hub_id(path):
        return path
    return _snapshot(str(path))


@functools.cache
def _snapshot(repo_id: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from tqdm.auto import tqdm

    here = f"{repo_id} is not a file or folder here"
    try:  # tqdm's own bars: a download of gigabytes shows its progress, whatever hides the model-loading bars
        folder = snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS,
                                   tqdm_class=tqdm)
    except GatedRepoError as err:
        raise HubError(f"{repo_id} is gated on the Hugging Face Hub: accept its licence on its page, then log in "
                       "(hf auth login) or set HF_TOKEN") from err
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise HubError(f"{here}, and the Hugging Face Hub has no model {repo_id} (or it is private: log in with "
                       "hf auth login); check the path or the id") from err
    except Exception as err:  # no connection and not in the cache, HF_HUB_OFFLINE=1, a partial copy, a lost download
        raise HubError(f"{here}, and the Hugging Face Hub could not give it ({type(err).__name__}: "
                       f"{first_sentence(err)}); check the path, or run the command once where there is a "
                       "network and copy its Hub cache (HF_HOME) here") from err
    if not (Path(folder) / "model_index.json").is_file():
        raise HubError(f"{repo_id} on the Hugging Face Hub is not a diffusers pipeline (no model_index.json); give a "
                       "diffusers model id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or a local file")
    return folder


def first_sentence(err: BaseException) -> str:
    """The first line's first sentence of an error's message (huggingface_hub's run to a paragraph)."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line.split(". ")[0].rstrip(".")[:240]
