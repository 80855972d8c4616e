"""WaDi core library: LoRaD rotation adapters, WaDi distillation, one-step sampling, merge and export, weight
analysis, evaluation, the downstream tasks, and the embedded shapes world.

    lorad/     the adapter: pure math (functional), layers (module), presets, the file (io)
    students   one interface to the four adapter kinds (LoRaD, LoRA, DoRA, full)
    models/    load any backbone and its parts, recognise its family, key conversion, VAE encode/decode
    sampling/  one call shape for every sampler; a Generator from a model, adapters and learned tokens
    distill/   the distiller, its nested config, the named recipes, the optional extras
    merge      bake adapters into a checkpoint, export a LoRA, merge a student into its teacher
    analysis/  weight-direction analysis and its report
    evaluate, metrics   prompt accuracy, FID, precision/recall, CLIP score
    tasks/     ControlNet, ReVersion, DreamBooth
    shapes/    the embedded world: grammar, renderer, judge, the shipped teacher and how it was trained
"""

__version__ = "0.1.0"
