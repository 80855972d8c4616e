"""Drawing images: one call shape for every sampler (multi-step with CFG, one step, ControlNet, two-stage high
resolution) and a :class:`Generator` built from a model, adapters with strengths and learned tokens::

    generator = build_generator("sd15/", adapters=[("student.safetensors", 1.0)])
    images = generator(["a red circle"], seeds=[0], sampler=OneStep())
"""

from .generator import Generator, build_generator
from .latents import check_sampling_settings, image_size, initial_latents, latent_shape
from .prediction import prediction_type
from .multistep import SCHEDULERS, make_scheduler, sample, sample_latents
from .samplers import Controlled, MultiStep, OneStep, Sampler, TwoStage

SAMPLERS = SCHEDULERS  # the scheduler names --sampler takes

__all__ = ["Generator", "build_generator", "Sampler", "MultiStep", "OneStep", "Controlled", "TwoStage",
           "SCHEDULERS", "SAMPLERS", "sample", "sample_latents", "make_scheduler", "prediction_type",
           "check_sampling_settings", "image_size", "initial_latents", "latent_shape"]
