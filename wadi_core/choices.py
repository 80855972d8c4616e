"""The choices and places a host offers before anything heavy is loaded (a command's ``--help``, a web UI's
form): the adapter kinds, the multi-step schedulers, and where the embedded model and its ControlNet are."""

from pathlib import Path

ADAPTER_KINDS = ("lorad", "lora", "dora", "full")  # what a trained network's trainable part is (wadi_core.students)
SCHEDULERS = ("ddim", "euler")  # the multi-step samplers' schedules (wadi_core.sampling)

_HERE = Path(__file__).resolve().parent
EMBEDDED_MODEL = _HERE / "shapes" / "model"  # the embedded shapes teacher, every command's default model
SHAPES_CONTROLNET = _HERE / "shapes" / "controlnet"  # its shipped silhouette ControlNet
