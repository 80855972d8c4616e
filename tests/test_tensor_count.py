"""benchmarks/tensor_count.py: the peak of live tensor memory, counted as a GPU's allocator counts it, on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.tensor_count import TensorCount

MB = 2**20


def megabyte():
    return torch.ones(MB // 4)


def test_the_count_follows_storages_made_and_freed_and_leaves_out_host_memory():
    held, weight, host = megabyte(), torch.nn.Parameter(megabyte()), [megabyte()]
    count = TensorCount(kinds={"weights": lambda: [weight], "gradients": lambda: [weight.grad]}, host=lambda: host)
    with count:  # (what else the test process holds counts too: the numbers below are above that)
        others = count.start_bytes - 2 * MB
        assert host[0].untyped_storage()._cdata not in count.live and count.at_peak["weights"] == MB
        a = held * 2
        view = a[: MB // 8]  # (a view: no new storage)
        b = view.sum() + a  # a, b and a scalar: the peak, 4 MB and 4 bytes
        del a, view
        b.add_(1)  # in place: nothing new
        assert count.total - others == 3 * MB  # held, weight, b (the scalar was freed)
        del b
        assert count.total - others == 2 * MB
        (weight * held).sum().backward()  # the gradient is made, its product freed
        with count.host_side():  # (an optimiser stepping in host memory)
            on_host = torch.ones(8 * MB)
            handed = held.to(torch.float32)  # the device's own tensor handed through: still the device's
            copied = held.to(torch.float64)  # a host copy of it
        assert handed is held and copied.numel() == held.numel()
        host[0].add_(1)  # the host's own tensors stay out of the count outside host_side too
        on_host.mul_(2)
        joined = torch.cat([held[: MB // 16]] * 2)  # half a megabyte
    assert count.peak_bytes - others == 4 * MB + 4
    assert count.total - others == 3 * MB + MB // 2  # held, weight, its gradient, joined
    assert count.at_peak == {"weights": MB, "gradients": 0, "other": others + 3 * MB + 4}
    assert joined.numel() == MB // 8


def test_the_breakdown_is_taken_at_the_peak_with_gradients_made_during_the_block():
    weight = torch.nn.Parameter(torch.ones(MB))  # 4 MB
    count = TensorCount(kinds={"weights": lambda: [weight], "gradients": lambda: [weight.grad]})
    with count:
        others = count.start_bytes - 4 * MB
        (weight * 3).sum().backward()  # the product (4 MB) is freed when its gradient (4 MB) is made
        grown = torch.zeros(4 * MB)  # 16 MB beside the weight and its gradient: the peak
        del grown
    assert count.peak_bytes - others == 24 * MB
    assert count.at_peak == {"weights": 4 * MB, "gradients": 4 * MB, "other": others + 16 * MB}
