"""A stand-in for torchvision, for the test process only.

There is no CPU build of torchvision for this torch, and the real one cannot be imported next to
it; ComfyUI imports torchvision at module level in a few model files (Stable Cascade, Cosmos) that
WaDi never runs. Anything used from here raises.
"""


class _Missing:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} needs the real torchvision, which the WaDi tests do not install")


def __getattr__(name):
    return _Missing(f"torchvision.{name}")
