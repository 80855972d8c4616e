"""The optimiser state in host memory (``wadi distill --offload-optimizer``, wadi_core/distill/offload.py): AdamW's
steps to the bit, a state that a plain AdamW loads and the other way round, and a distillation that trains the
student a plain run trains and resumes across the setting. (What it saves is a GPU's memory: benchmarks/
distill_memory.py --offload measures it where there is one.)"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_sd_folder
from wadi_core.distill import DistillConfig, Distiller
from wadi_core.distill.offload import HostAdamW

SETTINGS = dict(lr=1e-2, weight_decay=0.0, fused=True)


def network():
    torch.manual_seed(0)
    return torch.nn.ModuleList([torch.nn.Linear(6, 8), torch.nn.Linear(8, 3), torch.nn.Linear(3, 3)])


def groups(net):  # two groups of their own rates; the third layer is never used, so it gets no gradient
    return [{"params": list(net[0].parameters())}, {"params": [*net[1].parameters(), *net[2].parameters()],
                                                     "lr": 3e-2}]


def train(net, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for group in opt.param_groups:
            group["lr"] *= 0.7  # a schedule, set on the optimiser's own groups as the trainer does
        net[1](net[0](torch.randn(5, 6, generator=g))).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def assert_same_state(a: dict, b: dict):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, entry in a["state"].items():
        assert entry.keys() == b["state"][index].keys()
        assert all(torch.equal(value, b["state"][index][key]) for key, value in entry.items())


def test_host_adamw_steps_as_adamw_and_their_states_are_interchangeable():
    plain_net, host_net = network(), network()
    plain = torch.optim.AdamW(groups(plain_net), **SETTINGS)
    host = HostAdamW(groups(host_net), **SETTINGS)
    untouched = host_net[2].weight.clone()
    train(plain_net, plain, 3)
    train(host_net, host, 3)
    assert all(torch.equal(p, q) for p, q in zip(plain_net.parameters(), host_net.parameters()))
    assert torch.equal(host_net[2].weight, untouched)
    assert_same_state(plain.state_dict(), host.state_dict())
    assert not host.state  # nothing kept beside the device's parameters: the moments are the host copies'
    moments = [t.data_ptr() for entry in host.host.state.values() for t in entry.values() if t.dim()]
    assert len(moments) == 2 * 4 and not set(moments) & {p.data_ptr() for p in host_net.parameters()}

    # a plain AdamW's state continued in host memory, and the other way round, step as a plain AdamW goes on (the
    # states are copied, as from a checkpoint: a loaded state on the same device would share its tensors)
    swapped_net, back_net = copy.deepcopy(plain_net), copy.deepcopy(host_net)
    swapped = HostAdamW(groups(swapped_net), **SETTINGS)
    swapped.load_state_dict(copy.deepcopy(plain.state_dict()))
    assert swapped.param_groups[1]["lr"] == plain.param_groups[1]["lr"]
    back = torch.optim.AdamW(groups(back_net), **SETTINGS)
    back.load_state_dict(copy.deepcopy(host.state_dict()))
    for net, opt in ((plain_net, plain), (swapped_net, swapped), (back_net, back)):
        train(net, opt, 2, seed=2)
    for other in (swapped_net, back_net):
        assert all(torch.equal(p, q) for p, q in zip(plain_net.parameters(), other.parameters()))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("offload")
    (root / "prompts.txt").write_text("a red circle\na blue square on the left\na yellow square\na green triangle\n")
    return {"model": str(write_sd_folder(root / "sd")), "prompts": str(root / "prompts.txt"), "root": root}


def distill(world, out, **options):
    settings = dict(model=world["model"], prompts=world["prompts"], student_rank=4, fake_rank=2, steps=4,
                    batch_size=2, report_to="none", sample_every=0, checkpoint_every=2, ema=0.5,
                    out=str(world["root"] / out))
    return Distiller(DistillConfig.from_options(**{**settings, **options}), progress=False, log=lambda text: None)


def assert_same_student(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_a_distillation_with_the_optimiser_state_in_host_memory_trains_the_same_student_and_resumes_either_way(
        world):
    plain = distill(world, "plain").run()
    offloaded = distill(world, "offloaded", offload_optimizer=True)
    assert isinstance(offloaded.opt_student.optimizer, HostAdamW)
    assert_same_student(offloaded.run(), plain)
    for first, then in ((True, False), (False, True)):  # stopped at step 2, resumed with the other setting
        name = f"resumed-{first}"
        part = distill(world, name, offload_optimizer=first)
        assert part.run(should_stop=lambda run=part: run.step == 2) is None
        assert_same_student(distill(world, name, offload_optimizer=then, resume=True).run(), plain)


def test_the_benchmarks_tensor_count_holds_adamws_state_unless_it_is_in_host_memory(world):
    """benchmarks/distill_memory.py counts a step's tensors as a GPU would (tensor_count.py): AdamW's moments and step
    counts are in the count beside the device's weights, and none of HostAdamW's host memory is."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.distill_memory import count_step

    counts = {}
    for offload in (False, True):
        run = distill(world, f"counted-{offload}", offload_optimizer=offload)
        run.train_step()  # AdamW makes its moments in the first step
        counts[offload] = count_step(run)
        trained = [(p.numel(), p.element_size()) for p in run.student_params + run.fake_params]
        run.close()
    plain, host = counts[False]["at_peak"], counts[True]["at_peak"]
    weights = sum(numel * size for numel, size in trained)
    assert plain["trained weights"] == host["trained weights"] == weights
    assert plain["optimiser state"] == 2 * weights + 4 * len(trained) and host["optimiser state"] == 0
    assert plain["frozen weights"] == host["frozen weights"] > 0
    assert counts[False]["start"] - counts[True]["start"] == plain["optimiser state"]  # the state, held throughout
    for key in ("peak", "end"):  # the step itself holds the same on the device either way
        assert counts[False][key] - counts[False]["start"] == counts[True][key] - counts[True]["start"]
