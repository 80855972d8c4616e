"""WaDi distillation: the trainer, its nested config and the named recipes.

    from wadi_core.distill import DistillConfig, Distiller
    config = DistillConfig.from_options(out="runs/student", steps=800)   # the embedded teacher, its recipe
    student = Distiller(config).run()                                    # runs/student/student.safetensors

``recipes`` and ``config`` import nothing heavy (a UI reads them before torch is loaded); the trainer is
imported on first use of :class:`Distiller`.
"""

from .config import DistillConfig, Network, Timesteps
from .recipes import RECIPES, Recipe, get_recipe, recipe_for_family, recipe_for_model

_TRAINER = ("Distiller", "Diverged", "ResumeMismatch", "trainable_share", "CHECKPOINT", "STATE_FILE", "RUN_FILES")


def __getattr__(name):
    if name in _TRAINER:
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module 'wadi_core.distill' has no attribute '{name}'")


__all__ = ["DistillConfig", "Network", "Timesteps", "RECIPES", "Recipe", "get_recipe", "recipe_for_family",
           "recipe_for_model", *_TRAINER]
