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


def test_fsdp_weights_count_as_this_process_shards_and_gathered_blocks_as_long_as_they_are_gathered():
    """FSDP holds its weights as sharded tensors and frees a block's gathered weights by emptying their storage
    (no operator sees it): the count must end where a fresh count of what is held ends."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(512, 512, bias=False), torch.nn.Linear(512, 512, bias=False))
        mesh = init_device_mesh("cpu", (1,))
        for block in net:
            fully_shard(block, mesh=mesh)
        fully_shard(net, mesh=mesh)
        x = torch.randn(8, 512)
        net(x).sum().backward()  # (the gradients exist before the count, as in a training step after the first)
        params = list(net.parameters())
        count = TensorCount(kinds={"weights": lambda: params, "gradients": lambda: [p.grad for p in params]})
        with count:
            start = count.total
            net(x).sum().backward()
            end = count.total
        with TensorCount() as fresh:
            pass
        assert end == start == fresh.total  # the gathered weights were freed, and the count saw it
        assert count.at_peak["weights"] == count.at_peak["gradients"] == 2 * MB  # the shards (all of it: 1 process)
        assert count.peak_bytes - start >= MB  # a block's gathered weight beside its shard
        assert "resize_" not in torch.UntypedStorage.__dict__  # torch's own again
    finally:
        dist.destroy_process_group()
