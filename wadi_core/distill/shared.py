"""One frozen backbone for the three networks of the distillation.

With adapters, the student and the fake model differ from the teacher only by their adapter weights, so they need
not be copies of it: the student is the teacher's backbone with the "student" adapter acting, the fake model the
same backbone with the "fake" adapter acting, the teacher the backbone with none. A :class:`Role` is one of those
views: calling it switches its adapter on, runs the backbone and switches back to none, so the backbone seen
directly (``teacher.unet``) is always the teacher. For SD1.5 in fp32 that is 3.4 GB of weights instead of 10.3 GB.

Switching changes which adapters act, never which parameters train: for LoRaD layers through
:func:`wadi_core.lorad.module.only_adapters`, for PEFT's LoRA/DoRA layers through the two fields a tuner layer
keeps for it (``_active_adapter``, ``_disable_adapters``), set directly because PEFT's ``set_adapter`` would also
change ``requires_grad``, which the optimisers and DDP have already taken.
Gradient checkpointing recomputes a forward during backward, so a backward must run inside :meth:`Role.acting`.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from ..lorad import module as lorad_module


def _peft_layers(backbone: nn.Module) -> list[nn.Module]:
    return [m for m in backbone.modules() if hasattr(m, "_active_adapter") and hasattr(m, "_disable_adapters")
            and hasattr(m, "lora_A")]


class Switch:
    """Which adapter acts in a backbone (None: none, the teacher)."""

    def __init__(self, backbone: nn.Module):
        self.lorad = [m for _, m in lorad_module.lorad_layers(backbone)]
        self.peft = _peft_layers(backbone)
        self.current: str | None = None

    def set(self, name: str | None) -> None:
        if name == self.current:
            return
        lorad_module.only_adapters(self.lorad, () if name is None else (name,))
        for layer in self.peft:
            present = name is not None and name in layer.lora_A
            layer._disable_adapters = not present
            if present:
                layer._active_adapter = [name]
        self.current = name

    def refresh(self, backbone: nn.Module) -> None:
        """Find the layers again (after an adapter was added), and start from none acting."""
        self.__init__(backbone)
        lorad_module.only_adapters(self.lorad, ())
        self.current = "?"
        self.set(None)


class Role(nn.Module):
    """The shared backbone as one network of the distillation: only adapter ``name`` acts while it runs.
    Attributes it does not have (``config``, ``mid_block``, ...) are the backbone's."""

    def __init__(self, backbone: nn.Module, name: str, switch: Switch):
        super().__init__()
        self.backbone = backbone
        self.adapter_name = name
        self.__dict__["switch"] = switch  # shared by the roles, not a submodule

    def forward(self, *args, **kwargs):
        with self.acting():
            return self.backbone(*args, **kwargs)

    @contextmanager
    def acting(self):
        """This role's adapter acts inside the block (its backward too, for gradient checkpointing)."""
        previous = self.switch.current
        self.switch.set(self.adapter_name)
        try:
            yield
        finally:
            self.switch.set(previous)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["backbone"], name)


@contextmanager
def acting(model: nn.Module):
    """:meth:`Role.acting` for a role; nothing for a network of its own."""
    if isinstance(model, Role):
        with model.acting():
            yield
    else:
        yield
