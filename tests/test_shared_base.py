"""One frozen backbone for teacher, student and fake (wadi_core.distill.shared): a run on the shared backbone gives
the student the three-copy run gives (--separate-copies), for every adapter kind and with gradient checkpointing,
mixed precision and an EMA; it holds one backbone, the teacher's passes see no adapter, and it resumes exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_sd_folder
from wadi_core.distill import DistillConfig, Distiller
from wadi_core.distill.shared import Role

PROMPTS = "a red circle\na blue square on the left\na green triangle above a red circle\na yellow square\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    (root / "prompts.txt").write_text(PROMPTS)
    return {"model": str(write_sd_folder(root / "sd")), "prompts": str(root / "prompts.txt"), "root": root}


def distill(world, out, log=lambda text: None, **options):
    settings = dict(model=world["model"], prompts=world["prompts"], student_rank=4, fake_rank=2, steps=3,
                    batch_size=2, report_to="none", sample_every=0, checkpoint_every=0, out=str(world["root"] / out))
    settings.update(options)
    return Distiller(DistillConfig.from_options(**settings), progress=False, log=log)


def student_of(distiller) -> dict[str, torch.Tensor]:
    return load_file(str(distiller.run()))


def assert_same(a: dict, b: dict, tolerance: float = 0.0):
    assert a.keys() == b.keys()
    for key in a:
        if tolerance:
            assert float((a[key] - b[key]).abs().max()) <= tolerance * float(b[key].abs().max()), key
        else:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("kinds", [("lorad", "lorad"), ("lora", "lora"), ("lorad", "dora")],
                         ids=lambda k: "-".join(k))
def test_the_shared_backbone_trains_the_student_three_copies_train(world, kinds):
    options = dict(student_kind=kinds[0], fake_kind=kinds[1])
    shared = distill(world, f"shared-{'-'.join(kinds)}", **options)
    assert isinstance(shared.student, Role) and isinstance(shared.fake, Role)
    assert shared.student.backbone is shared.teacher.unet is shared.fake.backbone
    separate = distill(world, f"separate-{'-'.join(kinds)}", separate_copies=True, **options)
    assert not isinstance(separate.student, Role) and separate.student is not separate.teacher.unet
    assert_same(student_of(shared), student_of(separate))


def test_the_same_with_checkpointing_ema_and_mixed_precision(world):
    options = dict(gradient_checkpointing=True, ema=0.9, mixed_precision="bf16", student_kind="lorad",
                   fake_kind="lora")
    assert_same(student_of(distill(world, "shared-options", **options)),
                student_of(distill(world, "separate-options", separate_copies=True, **options)))


def test_one_backbone_in_memory_and_the_teacher_sees_no_adapter(world):
    shared, separate = distill(world, "memory-shared"), distill(world, "memory-separate", separate_copies=True)

    def backbone_bytes(d):
        tensors = {p.data_ptr(): p for net in (d.teacher.unet, d.student, d.fake) for p in net.parameters()}
        return sum(t.numel() * t.element_size() for t in tensors.values())
    one = sum(p.numel() * p.element_size() for p in shared.teacher.unet.parameters())
    assert backbone_bytes(shared) == one  # backbone and both adapters, once
    assert backbone_bytes(separate) > 2.5 * backbone_bytes(shared)
    g = torch.Generator().manual_seed(0)
    x, t, cond = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500]), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        before = shared.teacher.unet(x, t, cond).sample
    shared.run()
    with torch.no_grad():
        after = shared.teacher.unet(x, t, cond).sample
        student = shared.student(x, t, cond).sample
    assert torch.equal(before, after)  # trained adapters, and the teacher as it was
    assert not torch.allclose(student, after)


def test_a_shared_run_resumes_exactly(world):
    straight = student_of(distill(world, "resume-straight", steps=4))
    first = distill(world, "resume-parts", steps=4, checkpoint_every=2)
    assert first.run(should_stop=lambda: first.step == 2) is None
    resumed = student_of(distill(world, "resume-parts", steps=4, checkpoint_every=2, resume=True))
    assert_same(resumed, straight)


@pytest.mark.parametrize("options, layout", [
    ({}, "(both adapters on the teacher's one backbone)"),
    ({"separate_copies": True}, "(each on its own copy of the backbone)"),
    ({"student_kind": "full"}, "(the fake on the teacher's backbone, the student on its own copy)")],
    ids=["shared", "separate", "full-student"])
def test_a_run_says_first_what_each_network_trains_and_where(world, options, layout):
    said = []
    run = distill(world, f"said-{'-'.join(options) or 'shared'}", log=said.append, **options)
    trained = {id(p) for p in run.student_params + run.fake_params}
    unet = sum(p.numel() for p in run.teacher.unet.parameters() if id(p) not in trained)
    student, fake = (sum(p.numel() for p in params) for params in (run.student_params, run.fake_params))
    kind = "full fine-tuning" if options.get("student_kind") == "full" else "lorad rank 4"
    assert said[0] == (f"student {kind} on unet-student: {student / 1e6:.2f}M weights trained, {student / unet:.1%} "
                       f"of the UNet's {unet / 1e6:.1f}M; fake lorad rank 2 on unet-fake: {fake / 1e6:.2f}M weights "
                       f"trained, {fake / unet:.1%} of the UNet's {unet / 1e6:.1f}M {layout}")
    assert 0 < fake < student <= unet and (student == unet) == (kind == "full fine-tuning")
    run.close()
