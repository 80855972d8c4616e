"""New tokens with learned input embeddings (ReVersion's ``<R>``, textual inversion), and their files.

Two files per learned token:
- ours (``wadi.format = embedding``): the vector under ``token_embedding`` with the token, its
  initialiser and the base model in the metadata;
- a textual-inversion file: one tensor ``emb_params [1, hidden]``, the layout both ComfyUI
  (``embedding:NAME`` in a prompt, file in ``models/embeddings``) and A1111/Forge
  (``embeddings/NAME.safetensors``, trigger word NAME) load natively.
:func:`load_embedding` reads either.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import fileio

OUR_KEY = "token_embedding"
TI_KEY = "emb_params"
FORMAT = "embedding"


class EmbeddingError(ValueError):
    """A token or embedding file that cannot be used; the message names the problem and the fix."""


def embedding_table(components) -> torch.nn.Embedding:
    return components.text_encoder.get_input_embeddings()


def token_ids(components, text: str) -> list[int]:
    """Ids of ``text`` without the begin/end tokens."""
    return components.tokenizer(text, add_special_tokens=False).input_ids


def add_token(components, token: str, init_words: str) -> int:
    """Add ``token`` to the tokenizer and text encoder, its embedding the mean of ``init_words``' token
    embeddings; returns its id. A token the vocabulary already has is refused."""
    tokenizer = components.tokenizer
    if not token.strip() or " " in token.strip():
        raise EmbeddingError(f"the new token must be one word without spaces, got '{token}'")
    pieces, vocab = tokenizer.tokenize(token), tokenizer.get_vocab()
    if token in vocab or token.lower() in vocab or (len(pieces) == 1 and pieces[0] in vocab):
        raise EmbeddingError(f"'{token}' is already in the tokenizer's vocabulary; choose a new token such as '<R>' "
                             "or '<my-relation>'")
    init_ids = token_ids(components, init_words)
    if not init_ids:
        raise EmbeddingError(f"the initialiser '{init_words}' has no tokens; give a word such as 'in' or 'on'")
    tokenizer.add_tokens([token])
    new_id = tokenizer.convert_tokens_to_ids(token)
    if token_ids(components, token) != [new_id]:
        raise EmbeddingError(f"the tokenizer splits '{token}' even after adding it; choose another token")
    encoder = components.text_encoder
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is set just below
    table = embedding_table(components)
    with torch.no_grad():
        table.weight[new_id] = table.weight[init_ids].mean(0)
    return new_id


def set_token_vector(components, token_id: int, vector: torch.Tensor) -> None:
    table = embedding_table(components)
    if vector.shape != table.weight.shape[1:]:
        raise EmbeddingError(f"the embedding has {vector.shape[-1]} values but this text encoder's tokens have "
                             f"{table.weight.shape[1]}; it was made for another base model")
    with torch.no_grad():
        table.weight[token_id] = vector.to(table.weight)


def save_embedding(vector: torch.Tensor, path: str | os.PathLike, token: str, meta: dict[str, str] | None = None,
                   overwrite: bool = False) -> Path:
    """Our file: the vector with the token and ``meta`` (initialiser, base, training settings)."""
    info = {"wadi.format": FORMAT, "wadi.token": token, "wadi.hidden_size": str(vector.numel()), **(meta or {})}
    return fileio.save_safetensors({OUR_KEY: vector.detach().float().reshape(-1).contiguous()}, path, info,
                                   overwrite=overwrite)


def save_textual_inversion(vector: torch.Tensor, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The textual-inversion file ComfyUI and A1111 load: ``emb_params [1, hidden]``."""
    return fileio.save_safetensors({TI_KEY: vector.detach().float().reshape(1, -1).contiguous()}, path,
                                   {"wadi.format": "textual-inversion"}, overwrite=overwrite)


def read_embedding(path: str | os.PathLike) -> tuple[torch.Tensor, str, dict[str, str]]:
    """``(vector, token, metadata)`` from our file or a one-vector textual-inversion file (whose token is its
    file name, as in A1111)."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"embedding {path} does not exist; give the .safetensors file wadi reversion wrote")
    if path.suffix in (".pt", ".bin", ".ckpt"):
        fileio.refuse_pickle(path, "embedding")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, names = f.metadata() or {}, list(f.keys())
            tensors = {k: f.get_tensor(k) for k in names}
    except Exception as err:
        raise EmbeddingError(f"{path} is not a readable safetensors file ({err}); it may be truncated — "
                             "train or download it again") from None
    if meta.get("wadi.format") == FORMAT and OUR_KEY in tensors:
        return tensors[OUR_KEY].reshape(-1), meta["wadi.token"], meta
    vectors = tensors.get(TI_KEY, next(iter(tensors.values())) if len(tensors) == 1 else None)
    if vectors is None or vectors.ndim not in (1, 2):
        raise EmbeddingError(f"{path} is not a token embedding (keys: {', '.join(names[:4])}); give a file written "
                             "by wadi reversion or a one-vector textual-inversion file")
    if vectors.ndim == 2 and vectors.shape[0] != 1:
        raise EmbeddingError(f"{path} holds {vectors.shape[0]} vectors; wadi loads one-vector embeddings only")
    return vectors.reshape(-1), path.stem, meta


def load_embedding(components, path: str | os.PathLike, token: str | None = None) -> str:
    """Add the embedding in ``path`` to the model under ``token`` (default: the file's own token);
    returns the token to write in prompts."""
    vector, own_token, _ = read_embedding(path)
    token = token or own_token
    hidden = embedding_table(components).weight.shape[1]
    if vector.numel() != hidden:
        raise EmbeddingError(f"{path} has {vector.numel()} values per token but this text encoder uses {hidden}; "
                             "it was trained for another base model")
    new_id = add_token(components, token, init_words=components.tokenizer.eos_token)
    set_token_vector(components, new_id, vector)
    return token
