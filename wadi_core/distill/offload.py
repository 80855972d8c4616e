"""AdamW with its state in host memory (``wadi distill --offload-optimizer``).

AdamW keeps two float32 moments per trained weight: for the paper's SD1.5 student (83.8M adapter weights) that is
0.67 GB on the GPU beside the weights and their gradients. :class:`HostAdamW` keeps the moments, and a copy of the
trained weights, in host memory instead: each step copies the weights and their gradients to the host, runs
torch's AdamW there, and copies the new weights back. The GPU then holds the weights and their gradients only; a
step moves the trained weights' size three times and runs the update on the CPU. The device's weights stay the
ones that count: whatever sets them between steps (a resumed run loading its checkpoint) is what the next step
starts from.

It steps exactly as ``torch.optim.AdamW`` with the same settings (the same update, on the same numbers), and its
``state_dict`` is the one a plain AdamW over the same parameters would have, so a run resumes with or without it.
Its ``param_groups`` are the device's parameters, so what reads or sets them (learning rates, gradient clipping,
a gradient scaler's unscaling) sees the optimiser it expects.
"""

from __future__ import annotations

import torch


class HostAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW(params, **settings)`` whose moments, and the copy of the weights it steps, live in host
    memory."""

    def __init__(self, params, **settings):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        host_groups = [{**group, "params": [_host_copy(p) for p in group["params"]]} for group in groups]
        self.host = torch.optim.AdamW(host_groups, **settings)
        super().__init__(groups, self.host.defaults)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("HostAdamW.step takes no closure")
        _copy_settings(self.param_groups, self.host.param_groups)  # (learning rates set during the run)
        pairs = [(p, h) for group, host in zip(self.param_groups, self.host.param_groups)
                 for p, h in zip(group["params"], host["params"])]
        for p, h in pairs:  # a weight without a gradient is left alone, as AdamW leaves it
            h.grad = None
            if p.grad is not None:
                h.copy_(p)
                h.grad = p.grad.to(h.device, h.dtype)
        self.host.step()
        for p, h in pairs:
            if h.grad is not None:
                p.copy_(h)
                h.grad = None

    def state_dict(self):
        _copy_settings(self.param_groups, self.host.param_groups)
        return self.host.state_dict()

    def load_state_dict(self, state_dict):
        self.host.load_state_dict(state_dict)  # (torch moves the state to the host copies)
        _copy_settings(self.host.param_groups, self.param_groups)


def _copy_settings(sources: list[dict], targets: list[dict]) -> None:
    """Each group's settings (learning rate, betas, ...) from ``sources`` to the matching group of ``targets``."""
    for source, target in zip(sources, targets):
        target.update({key: value for key, value in source.items() if key != "params"})


def _host_copy(param: torch.Tensor) -> torch.Tensor:
    """A host tensor with ``param``'s values (page-locked beside a GPU, which copies faster)."""
    copy = torch.empty_like(param, device="cpu", pin_memory=param.is_cuda)
    return copy.copy_(param.detach())
