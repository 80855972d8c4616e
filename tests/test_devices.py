"""--device: which device a name means, refusals that name what there is, and the model moved whole (adapters
included) after the adapters are applied. No GPU is needed: CUDA's presence is faked where a test needs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wadi_cli.cli import main
from wadi_core.choices import EMBEDDED_MODEL
from wadi_core.devices import resolve


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A LoRaD student of the embedded model whose angles are not zero."""
    from wadi_core import students
    from wadi_core.models import load_components

    unet = load_components(EMBEDDED_MODEL).unet
    spec = students.AdapterSpec("lorad", 4, "unet-student")
    students.add_adapter(unet, spec)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in students.trainable_parameters(unet, spec, "default"):
            p.normal_(0, 0.05)
    return students.save_adapter_file(unet, spec, tmp_path_factory.mktemp("student") / "student.safetensors")


def fake_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("gpus, want", [(0, "cpu"), (2, "cuda")])
def test_auto_takes_a_gpu_when_torch_sees_one(monkeypatch, gpus, want):
    fake_cuda(monkeypatch, gpus)
    assert resolve("auto") == torch.device(want)
    assert resolve("") == torch.device(want)
    assert resolve("CPU") == torch.device("cpu")


def test_a_gpu_that_is_not_there_is_refused_with_what_there_is(monkeypatch):
    fake_cuda(monkeypatch, 0)
    with pytest.raises(ValueError, match="sees no CUDA GPU.*--device cpu"):
        resolve("cuda")
    fake_cuda(monkeypatch, 2)
    assert resolve("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"there are 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        resolve("cuda:2")
    for name in ("gpu0", "meta", "cuda:x"):
        with pytest.raises(ValueError, match="choose auto, cpu, cuda, cuda:N or mps"):
            resolve(name)


def test_the_model_moves_whole_with_its_adapters(student):
    """Moved after the adapters are applied: every parameter and buffer ends on the device (the meta device
    stands in for a GPU: a module left behind would stay on the CPU)."""
    from wadi_core.sampling import build_generator

    generator = build_generator(EMBEDDED_MODEL, [(student, 1.0)], device=torch.device("meta"))
    modules = (generator.components.text_encoder, generator.components.vae, generator.components.unet)
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    adapters = [p for name, p in generator.components.unet.named_parameters() if "adapter0" in name]
    assert adapters and len(tensors) > 100
    assert {t.device.type for t in tensors} == {"meta"}


def test_the_cpu_draws_what_the_default_draws(student):
    from wadi_core.sampling import build_generator

    prompts, seeds = ["a red circle at the top left", "a blue square"], [3, 4]
    default = build_generator(EMBEDDED_MODEL, [(student, 1.0)])(prompts, seeds)
    on_cpu = build_generator(EMBEDDED_MODEL, [(student, 1.0)], device="cpu")(prompts, seeds)
    assert on_cpu.shape == (2, 32, 32, 3) and (default == on_cpu).all()


@pytest.mark.parametrize("command", [["generate", "--prompt", "a red circle"], ["eval", "--num-prompts", "2"],
                                     ["demo", "--steps", "1"]])
def test_commands_refuse_a_missing_gpu_before_any_work(monkeypatch, tmp_path, capsys, command):
    fake_cuda(monkeypatch, 0)
    out = tmp_path / "out"
    assert main([*command, "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda: this torch" in err and "sees no CUDA GPU" in err
    assert not out.exists()
