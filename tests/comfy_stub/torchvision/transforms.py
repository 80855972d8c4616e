"""See ``torchvision/__init__.py``: a stand-in whose members raise when used."""

from . import _Missing


def __getattr__(name):
    return _Missing(f"torchvision.transforms.{name}")
