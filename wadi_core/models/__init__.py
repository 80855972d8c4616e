"""Models: load any backbone and its parts (diffusers folders, single files, DiT), recognise its family from
its weights, read checkpoints without building them, convert weight names, and go between images and
latents."""

from .checkpoint import Checkpoint, CheckpointError, family_of_path, open_checkpoint
from .components import Components, ModelFolderError
from .families import family_from_weight_shapes, family_of_model, model_kind
from .hub import HubError, local_path
from .loading import load_components
from .vae import NonFiniteError, decode, encode

__all__ = ["Checkpoint", "CheckpointError", "family_of_path", "open_checkpoint", "Components", "ModelFolderError",
           "family_from_weight_shapes", "family_of_model", "model_kind", "HubError", "local_path",
           "load_components", "NonFiniteError", "decode", "encode"]
