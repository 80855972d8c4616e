"""Where drawing images runs: ``"auto"`` takes a CUDA GPU when this torch sees one, else the CPU.

``wadi distill`` leaves the choice to accelerate (it takes the GPU its process is given); generation and
evaluation take ``--device`` (``device=`` in Python). The images of a seed are the same on every device up to float
order: the starting noise is always drawn on the CPU (``wadi_core.sampling.latents``).
"""

from __future__ import annotations

CHOICES = "auto, cpu, cuda, cuda:N or mps"  # what --device takes ("cuda:1" is the second GPU); read by help texts


def resolve(name: str = "auto"):
    """The ``torch.device`` that ``name`` means here; a device this torch cannot use raises ValueError saying
    what there is instead."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device; choose {CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU; install a CUDA "
                             "build of torch (scripts/setup.sh with WADI_TORCH) or pass --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: there {'is' if count == 1 else 'are'} {count} CUDA "
                             f"GPU{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: Apple's MPS is not available on this machine; pass --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: not a device wadi draws on; choose {CHOICES}")
    return device


DTYPE_NAMES = ("fp32", "fp16", "bf16")  # what --dtype takes, besides "auto"


def torch_dtype(name: str):
    """The torch dtype a name of :data:`DTYPE_NAMES` means."""
    import torch
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def resolve_dtype(name: str, device) -> "torch.dtype":
    """The type a backbone draws in on ``device``: ``"auto"`` is float16 on a CUDA GPU (as diffusers' pipelines are
    run there: half the memory, and faster) and float32 elsewhere (a CPU is slower in half precision)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "fp16" if getattr(device, "type", device) == "cuda" else "fp32"
    if name not in DTYPE_NAMES:
        raise ValueError(f"--dtype {name}: choose auto, {', '.join(DTYPE_NAMES)}")
    return torch_dtype(name)
