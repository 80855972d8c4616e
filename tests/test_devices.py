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


def test_auto_draws_in_half_precision_on_a_gpu_only():
    from wadi_core.devices import resolve_dtype
    assert resolve_dtype("auto", torch.device("cuda", 1)) == torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) == resolve_dtype("auto", None) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype half: choose auto, fp32, fp16, bf16"):
        resolve_dtype("half", None)


def test_a_bf16_backbone_draws_nearly_what_fp32_draws(student, tmp_path, capsys):
    """--dtype: the UNet (and the student's adapter on it) reads and runs in bf16; text encoder and VAE stay fp32;
    the images differ from fp32's by bf16's rounding only. --dtype auto on a CPU draws fp32's images exactly."""
    from PIL import Image

    from wadi_core.sampling import build_generator

    half = build_generator(EMBEDDED_MODEL, [(student, 1.0)], dtype="bf16")
    c = half.components
    assert {p.dtype for n, p in c.unet.named_parameters() if "adapter0" not in n} == {torch.bfloat16}
    assert {p.dtype for p in (*c.text_encoder.parameters(), *c.vae.parameters())} == {torch.float32}
    prompts, seeds = ["a red circle at the top left", "a blue square"], [3, 4]
    full = build_generator(EMBEDDED_MODEL, [(student, 1.0)])(prompts, seeds).astype(int)
    difference = abs(half(prompts, seeds).astype(int) - full)
    assert 0 < difference.mean() < 4 and difference.max() < 96, (difference.mean(), difference.max())
    alone = build_generator(EMBEDDED_MODEL, [(student, 1.0)])(prompts[:1], seeds[:1]).astype(int)[0]
    for dtype in ("auto", "bf16"):
        out = tmp_path / dtype
        assert main(["generate", "--student", str(student), "--prompt", prompts[0], "--seed", "3", "--dtype", dtype,
                     "--out", str(out), "--quiet"]) == 0
        image = __import__("numpy").asarray(Image.open(next(out.glob("0*.png"))).convert("RGB")).astype(int)
        assert (image == alone).all() == (dtype == "auto")
