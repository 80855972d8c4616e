"""The ``wadi`` commands: which module defines each, and the line ``wadi --help`` shows for it. The command line
imports only the module of the command it runs, so that ``wadi --help`` loads no torch."""

COMMANDS = {
    "demo": ("demo_cmd", "distil the embedded teacher into a one-step student and report (CPU, ~15 min)"),
    "distill": ("distill", "distil a multi-step teacher into a one-step student (WaDi)"),
    "generate": ("generate_cmd", "generate images (multi-step with CFG, or one step with a student)"),
    "eval": ("eval_cmd", "evaluate a model: prompt accuracy, domain FID, images/s"),
    "merge": ("merge_cmd", "bake LoRaD adapters into a model (diffusers folder or single file)"),
    "export-lora": ("merge_cmd", "approximate LoRaD adapters by a standard LoRA (SVD of the delta)"),
    "extract": ("extract_cmd", "recover a LoRaD adapter from a merged model (the authors' released UNets), or convert "
                               "their angle files (kduv.pth)"),
    "analyze": ("analyze_cmd", "norm vs direction change of the weights of two checkpoints (paper Fig. 1)"),
    "controlnet-train": ("controlnet_cmd", "train a ControlNet for a teacher (embedded: silhouette control)"),
    "controlnet": ("controlnet_cmd", "generate with a ControlNet: one step with --student, or multi-step; --eval "
                                     "measures mask IoU and prompt accuracy on the embedded world"),
    "highres": ("highres_cmd", "one-step images above the training resolution (direct or two-stage)"),
    "reversion": ("reversion_cmd", "learn a relation token <R> from exemplar images (ReVersion)"),
    "reversion-eval": ("reversion_cmd", "measure a token learned on an embedded relation: teacher 25 steps and "
                                        "one-step student on new entity pairs, against the initialiser word"),
    "dreambooth": ("dreambooth_cmd", "teach a model a subject from a few images (DreamBooth with LoRaD, LoRA or full "
                                     "fine-tuning, prior preservation)"),
    "dreambooth-eval": ("dreambooth_cmd", "measure a subject adapter of the embedded world: fidelity (diamond), "
                                          "colour/position adherence, class drift, diversity"),
    "inspect": ("inspect_cmd", "show family, preset, rank, layers, parameters and angles of an adapter"),
    "presets": ("presets_cmd", "list LoRaD presets with layer and parameter counts (no weights needed)"),
    "ui": ("ui_cmd", "the web UI: distil, generate and analyze from a browser tab"),
}


def summary(name: str) -> str:
    return COMMANDS[name][1]
