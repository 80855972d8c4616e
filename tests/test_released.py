"""The authors' released weights: a whole-UNet state dict used directly (``--unet``), recovered exactly into a LoRaD
adapter (``wadi extract --merged``), and their angle files converted (``wadi extract --theta``). The files are
built here in the authors' format from a random rotation of a tiny UNet: ``theta = wrap(theta_a @ theta_b)``
into [-pi, pi), pairs 0::2 / 1::2 along the input dimension, every Linear of the student preset turned."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_unet, write_sd_folder
from wadi_cli.cli import main
from wadi_core import lorad
from wadi_core.lorad import functional as LF
from wadi_core.lorad.presets import select_targets
from wadi_core.models import load_components

RANK = 4


def wrap(theta: torch.Tensor) -> torch.Tensor:
    return (theta + math.pi) % (2 * math.pi) - math.pi


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny SD folder (the base), its UNet rotated by random rank-4 angles and saved as the authors do (the whole
    UNet's state dict), the same in fp16, and the angles as a kduv.pth."""
    root = tmp_path_factory.mktemp("released")
    base = write_sd_folder(root / "base")
    unet = load_components(base).unet
    g = torch.Generator().manual_seed(3)
    theta_a, theta_b, state = {}, {}, {k: v.clone() for k, v in unet.state_dict().items()}
    for name, module in select_targets(unet, preset="unet-student"):
        out_f, half = module.weight.shape[0], module.weight.shape[1] // 2
        theta_a[name] = torch.randn(out_f, RANK, generator=g) * 0.4
        theta_b[name] = torch.randn(RANK, half, generator=g) * 0.4
        angles = wrap(theta_a[name] @ theta_b[name])
        state[f"{name}.weight"] = LF.rotate_by_angles(module.weight.detach(), angles)
    file = root / "rotated_unet.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    half_file = root / "rotated_unet-fp16.safetensors"
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(half_file))
    kduv = root / "kduv.pth"
    torch.save({**{f"{k}.theta_a": v for k, v in theta_a.items()}, **{f"{k}.theta_b": v for k, v in theta_b.items()}},
               kduv)
    merged_folder = root / "merged"  # the same model as a diffusers folder, for comparison
    shutil.copytree(base, merged_folder)
    save_file({k: v.contiguous() for k, v in state.items()},
              str(merged_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    return {"root": root, "base": base, "file": file, "fp16": half_file, "kduv": kduv, "merged": merged_folder,
            "state": state, "theta": {k: theta_a[k] @ theta_b[k] for k in theta_a}}


def merged_with(base, adapter) -> dict[str, torch.Tensor]:
    unet = load_components(base).unet
    lorad.load_adapter(unet, adapter)
    lorad.merge_adapters(unet)
    lorad.detach(unet, unmerge=False)
    return unet.state_dict()


def relative(a: dict, b: dict) -> float:
    num = sum(float((a[k].double() - b[k].double()).norm()) ** 2 for k in b)
    den = sum(float(b[k].double().norm()) ** 2 for k in b)
    return math.sqrt(num / den)


def test_extract_recovers_the_rotation_exactly(released, tmp_path, capsys):
    out = tmp_path / "student.safetensors"
    assert main(["extract", "--model", str(released["base"]), "--merged", str(released["file"]), "--rank", str(RANK),
                 "--out", str(out), "--quiet"]) == 0
    assert "pair norms checked to" in capsys.readouterr().out
    assert relative(merged_with(released["base"], out), released["state"]) <= 1e-5
    adapter = lorad.read_adapter(out)
    for key, (up, down) in adapter.layers.items():
        name = next(n for n in released["theta"] if lorad.io.encode_name("lora_unet", n) == key)
        difference = wrap(up @ down - released["theta"][name])  # equal modulo 2 pi
        assert difference.abs().max() < 1e-4, name
    assert adapter.rank == RANK and len(adapter.layers) == len(released["theta"])


def test_a_lower_rank_reports_the_error_it_makes(released, tmp_path, capsys):
    from wadi_core.extract import extract
    result = extract(released["base"], released["file"], tmp_path / "r2.safetensors", rank=2, progress=False)
    measured = merged_with(released["base"], result.path)
    for fit in result.layers:
        key = f"{fit.name}.weight"
        want = released["state"][key].double()
        assert abs(float((measured[key].double() - want).norm() / want.norm()) - fit.weight_error) < 1e-5
    assert result.weight_error > 1e-3 and result.rank == 2
    auto = extract(released["base"], released["file"], tmp_path / "auto.safetensors", rank="auto", max_error=1e-4,
                   progress=False)
    assert all(fit.weight_error <= 1e-4 and fit.rank <= RANK for fit in auto.layers)


def test_an_fp16_file_is_recovered_within_its_stated_tolerance(released, tmp_path):
    from wadi_core.extract import TOLERANCE_ULPS, extract
    result = extract(released["base"], released["fp16"], tmp_path / "h.safetensors", rank=RANK, progress=False)
    assert result.norm_tolerance == TOLERANCE_ULPS * torch.finfo(torch.float16).eps
    assert relative(merged_with(released["base"], result.path), released["state"]) <= 1e-3


def test_other_changes_are_named_and_refused_unless_written_as_a_residual(released, tmp_path, capsys):
    state = {k: v.clone() for k, v in released["state"].items()}
    state["conv_in.bias"] += 0.1
    linear = "down_blocks.0.attentions.0.proj_in.weight"
    state[linear] += 0.01  # an additive change: its pair norms move
    file = tmp_path / "tuned.safetensors"
    save_file(state, str(file))
    out = tmp_path / "a.safetensors"
    argv = ["extract", "--model", str(released["base"]), "--merged", str(file), "--rank", str(RANK), "--out", str(out),
            "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "conv_in.bias" in err and linear in err and "--allow-residual" in err and "wadi analyze" in err
    assert not out.exists()
    assert main(argv + ["--allow-residual"]) == 0
    remainder = load_file(str(tmp_path / "a.residual.safetensors"))
    assert set(remainder) == {"conv_in.bias", linear}
    rebuilt = merged_with(released["base"], out)
    for key, change in remainder.items():
        rebuilt[key] = rebuilt[key] + change
    assert relative(rebuilt, state) <= 1e-5


def test_the_authors_angle_file_converts_exactly(released, tmp_path, capsys):
    out = tmp_path / "theta.safetensors"
    argv = ["extract", "--model", str(released["base"]), "--theta", str(released["kduv"]), "--out", str(out)]
    assert main(argv) == 2 and "--allow-pickle" in capsys.readouterr().err and not out.exists()
    assert main(argv + ["--allow-pickle"]) == 0
    theirs = torch.load(released["kduv"], weights_only=True)
    adapter = lorad.read_adapter(out)
    for key, (up, down) in adapter.layers.items():
        module = next(n for n in released["theta"] if lorad.io.encode_name("lora_unet", n) == key)
        assert torch.equal(up, theirs[f"{module}.theta_a"]) and torch.equal(down, theirs[f"{module}.theta_b"])
    assert relative(merged_with(released["base"], out), released["state"]) <= 1e-5
    wrong = dict(theirs)
    name = next(iter(released["theta"]))
    wrong[f"{name}.theta_b"] = torch.zeros(RANK, 3)
    bad = tmp_path / "bad.pth"
    torch.save(wrong, bad)
    assert main(["extract", "--model", str(released["base"]), "--theta", str(bad), "--out", str(tmp_path / "b.st"),
                 "--allow-pickle"]) == 2
    assert name in capsys.readouterr().err


def test_generate_with_the_released_unet_equals_the_merged_folder(released, tmp_path):
    from PIL import Image
    common = ["--prompt", "a red circle", "--prompt", "a blue square", "--one-step", "--quiet"]
    assert main(["generate", "--model", str(released["base"]), "--unet", str(released["file"]), "--out",
                 str(tmp_path / "direct")] + common) == 0
    assert main(["generate", "--model", str(released["merged"]), "--out", str(tmp_path / "folder")] + common) == 0
    for a in sorted((tmp_path / "direct").glob("0*.png")):
        b = tmp_path / "folder" / a.name
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a.name


def test_with_a_released_unet_the_bases_own_unet_weights_are_neither_read_nor_needed(released, tmp_path):
    """What a download of the base for --unet holds: everything but the UNet's weights (its config stays). The
    model is the same as with the whole base; without --unet the folder is incomplete, and says what it lacks."""
    from PIL import Image

    from wadi_core.models.components import ModelFolderError

    lean = tmp_path / "base-without-unet-weights"
    shutil.copytree(released["base"], lean, ignore=shutil.ignore_patterns("diffusion_pytorch_model*"))
    shutil.copytree(released["base"] / "vae", lean / "vae", dirs_exist_ok=True)
    assert not list((lean / "unet").glob("*.safetensors")) and (lean / "unet" / "config.json").is_file()
    for dtype in (torch.float32, torch.bfloat16):
        want = load_components(released["base"], backbone=released["file"], unet_dtype=dtype).unet.state_dict()
        got = load_components(lean, backbone=released["file"], unet_dtype=dtype).unet.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    for name, model in (("lean", lean), ("whole", released["base"])):
        assert main(["generate", "--model", str(model), "--unet", str(released["file"]), "--one-step", "--prompt",
                     "a red circle", "--out", str(tmp_path / name), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "lean" / "grid.png")),
                          np.asarray(Image.open(tmp_path / "whole" / "grid.png")))
    with pytest.raises(ModelFolderError, match="unet/diffusion_pytorch_model.safetensors is missing"):
        load_components(lean)


def test_merge_writes_the_released_unet_into_the_bases_layout(released, tmp_path):
    out = tmp_path / "checkpoint"
    assert main(["merge", "--model", str(released["base"]), "--unet", str(released["file"]), "--out", str(out),
                 "--format", "diffusers", "--quiet"]) == 0
    written = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(written[k], released["state"][k]) for k in released["state"])
    assert (out / "vae").is_dir() and (out / "text_encoder").is_dir()


@pytest.mark.parametrize("case", ["other-architecture", "truncated", "missing-key", "nan"])
def test_bad_backbone_files_are_refused_in_one_line(released, tmp_path, capsys, case):
    state = dict(released["state"])
    file = tmp_path / f"{case}.safetensors"
    if case == "other-architecture":
        save_file({k: v.contiguous() for k, v in tiny_unet(cross_attention_dim=48).state_dict().items()}, str(file))
        expected = "another architecture"
    elif case == "truncated":
        file.write_bytes(released["file"].read_bytes()[:5000])
        expected = "not a readable safetensors file"
    elif case == "missing-key":
        state.pop("conv_in.bias")
        save_file(state, str(file))
        expected = "has no 'conv_in.bias'"
    else:
        state["conv_in.weight"] = state["conv_in.weight"].clone()
        state["conv_in.weight"][0, 0, 0, 0] = float("nan")
        save_file(state, str(file))
        expected = "NaN or Inf"
    for argv in (["generate", "--model", str(released["base"]), "--unet", str(file), "--one-step", "--prompt", "x",
                  "--out", str(tmp_path / f"g-{case}"), "--quiet"],
                 ["extract", "--model", str(released["base"]), "--merged", str(file), "--rank", "4", "--out",
                  str(tmp_path / f"e-{case}.safetensors"), "--quiet"]):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (argv[0], err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [file.name]


def test_the_unet_is_read_in_the_training_type_as_the_float32_one_cast(released):
    """The distiller reads the backbone in bf16 under mixed precision (never a float32 copy on the way): the same
    weights as reading float32 and casting, with or without a replacement UNet (fp32 or fp16 file); text encoder
    and VAE stay float32."""
    for backbone in (None, released["file"], released["fp16"]):
        want = load_components(released["base"], backbone=backbone).unet.to(torch.bfloat16).state_dict()
        model = load_components(released["base"], backbone=backbone, unet_dtype=torch.bfloat16)
        got = model.unet.state_dict()
        assert got.keys() == want.keys()
        assert all(v.dtype == torch.bfloat16 and torch.equal(v, want[k]) for k, v in got.items()), backbone
        assert {p.dtype for m in (model.text_encoder, model.vae) for p in m.parameters()} == {torch.float32}


def test_distill_takes_a_teacher_with_a_replacement_unet(released, tmp_path):
    from safetensors import safe_open

    from wadi_core.distill import DistillConfig, Distiller
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    run = Distiller(DistillConfig.from_options(out=str(tmp_path / "run"), model=str(released["base"]),
                                               backbone=str(released["file"]), prompts=str(prompts), steps=1,
                                               batch_size=2, student_rank=2, fake_rank=2, guidance=1.5,
                                               sample_every=0, report_to="none"), progress=False)
    teacher = run.teacher.unet.state_dict()
    assert all(torch.equal(teacher[k], released["state"][k]) for k in released["state"])
    with safe_open(str(run.run()), "pt") as f:
        assert f.metadata()["wadi.teacher_unet"] == str(released["file"])
