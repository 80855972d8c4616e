"""Which exceptions mean "the input was wrong" (or the machine refused): every host shows their message as one
sentence instead of a traceback. Each names the file, key or flag and the fix."""

from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    import torch

    from .distill import Diverged

    # AdapterError, CheckpointError, KeyConversionError, PromptFileError, ModelFolderError, OutputError, ... are
    # all ValueErrors; the rest come from the operating system and from training
    return (ValueError, FileNotFoundError, FileExistsError, Diverged,
            getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))
