"""``wadi analyze``: the norm/direction statistics, the streamed adapter weights, the swap models,
and the command end to end (outputs, bad input)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from conftest import randomize, tiny_unet, write_sd_folder
from wadi_cli.cli import main
from wadi_core import analysis, students
from wadi_core.lorad.io import AdapterError
from wadi_core.analysis.sources import ArchitectureMismatch, open_source


def rotate_rows(weight: torch.Tensor, angle: float) -> torch.Tensor:
    """Turn every row by ``angle`` keeping its norm: w cos(a) + u ||w|| sin(a), u a unit vector orthogonal to w."""
    u = torch.randn_like(weight)
    u = u - (u * weight).sum(1, keepdim=True) / weight.square().sum(1, keepdim=True) * weight
    u = u / u.norm(dim=1, keepdim=True)
    return weight * math.cos(angle) + u * weight.norm(dim=1, keepdim=True) * math.sin(angle)


def test_a_rotation_changes_direction_only_and_a_scaling_norm_only():
    torch.manual_seed(0)
    w = torch.randn(16, 10, dtype=torch.float64)
    rotated = analysis.layer_stats("r", w, rotate_rows(w, 0.1))
    assert rotated.direction_mean == pytest.approx(0.1, rel=1e-6)
    assert rotated.norm_mean == pytest.approx(0.0, abs=1e-9)
    scaled = analysis.layer_stats("s", w, w * 1.25)
    assert scaled.norm_mean == pytest.approx(0.25)
    assert scaled.direction_mean == pytest.approx(0.0, abs=1e-6)
    assert scaled.ratio == pytest.approx(0.0, abs=1e-5)


def test_svd_energy_finds_a_low_rank_change_and_no_structure_in_noise():
    torch.manual_seed(0)
    w = torch.randn(40, 40, dtype=torch.float64)
    low_rank = w + 0.05 * torch.randn(40, 1, dtype=torch.float64) @ torch.randn(1, 40, dtype=torch.float64)
    stats = analysis.layer_stats("low", w, low_rank)
    assert stats.rank_fraction_for_energy <= 2 / 40  # one direction (plus the normalisation) carries it
    noisy = analysis.layer_stats("noise", w, w + 0.05 * torch.randn(40, 40, dtype=torch.float64))
    assert noisy.rank_fraction_for_energy > 0.5
    assert analysis.RANK_FRACTIONS[5] == 0.3 and analysis.random_energy_curve((40, 40))[5] < 0.8  # noise: ~70%
    unchanged = analysis.layer_stats("same", w, w.clone())
    assert not unchanged.changed and unchanged.rank_fraction_for_energy == 0.0


def test_swap_weights_take_norms_from_one_side_and_directions_from_the_other():
    torch.manual_seed(0)
    base, other = torch.randn(8, 6), torch.randn(8, 6)
    mixed = analysis.swapped_weight(base, other, "base-norms")
    torch.testing.assert_close(mixed.norm(dim=1), base.norm(dim=1))
    torch.testing.assert_close(mixed / mixed.norm(dim=1, keepdim=True), other / other.norm(dim=1, keepdim=True))
    mixed = analysis.swapped_weight(base, other, "base-directions")
    torch.testing.assert_close(mixed.norm(dim=1), other.norm(dim=1))
    torch.testing.assert_close(mixed / mixed.norm(dim=1, keepdim=True), base / base.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("kind", ["lorad", "lora", "dora", "full"])
def test_streamed_adapter_weights_equal_the_merged_student(tmp_path, sd_dir, kind):
    """The weights ``wadi analyze`` reads for BASE + adapter are those of the loaded, merged student."""
    unet = tiny_unet()
    spec = students.AdapterSpec(kind, 4, "unet-student")
    params = students.add_adapter(unet, spec)
    randomize(params if kind != "full" else [p for n, p in unet.named_parameters() if "to_q" in n], std=0.05)
    if kind == "dora":  # move the magnitudes away from the row norms, so that they matter
        randomize([p for n, p in unet.named_parameters() if "magnitude" in n], std=1.0)
    adapter = students.save_adapter_file(unet, spec, tmp_path / f"{kind}.safetensors")
    expected = students.plain_model(unet).state_dict()
    source = open_source(adapter, open_source(sd_dir))
    for name in source.shapes:
        torch.testing.assert_close(source.read(name).float(), expected[name].float(), rtol=1e-5, atol=1e-5)


def test_models_of_different_architectures_are_refused_naming_the_layer(tmp_path, sd_dir):
    other = tmp_path / "other.safetensors"
    state = tiny_unet().state_dict()
    state["conv_in.weight"] = torch.zeros(32, 4, 5, 5)
    save_file(state, str(other))
    with pytest.raises(ArchitectureMismatch, match="'conv_in.weight' is"):
        analysis.analyse(open_source(sd_dir), open_source(other), progress=False)
    shapes_model = "wadi_core/shapes/model"
    assert main(["analyze", shapes_model, str(sd_dir), "--out", str(tmp_path / "x"), "--no-swap"]) == 2
    assert not (tmp_path / "x").exists()


def test_an_adapter_for_another_base_is_refused(tmp_path, sd_dir):
    unet = tiny_unet()
    spec = students.AdapterSpec("lorad", 4, "unet-student")
    students.add_adapter(unet, spec)
    adapter = students.save_adapter_file(unet, spec, tmp_path / "a.safetensors")
    with pytest.raises(AdapterError):
        open_source(adapter, open_source("wadi_core/shapes/model"))


def test_analyze_command_writes_numbers_plots_and_the_swap_ablation(tmp_path, sd_dir, capsys):
    unet = tiny_unet()
    randomize([p for n, p in unet.named_parameters() if n.endswith("weight") and p.ndim >= 2], seed=3, std=0.05)
    other = tmp_path / "other.safetensors"
    save_file(unet.state_dict(), str(other))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\na yellow circle\n")
    out = tmp_path / "analysis"
    assert main(["analyze", str(sd_dir), str(other), "--out", str(out), "--prompts", str(prompts), "--quiet"]) == 0
    report = json.loads((out / "analysis.json").read_text())
    assert report["summary"]["layers"] == report["summary"]["changed_layers"] > 10
    assert report["definitions"]["norm_change"] and report["summary"]["direction_change_mean"] > 0
    labels = [row["label"] for row in report["swap"]["rows"]]
    assert labels == ["OTHER", "BASE norms + OTHER directions", "OTHER norms + BASE directions", "BASE"]
    with open(out / "layers.csv") as f:
        assert len(list(csv.DictReader(f))) == report["summary"]["layers"]
    for png in ("changes.png", "svd_energy.png", "swap.png", "swap_samples.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "Swap ablation" in (out / "report.md").read_text()
    # a real model without prompts: one clear message, nothing written
    err_out = tmp_path / "again"
    assert main(["analyze", str(sd_dir), str(other), "--out", str(err_out)]) == 2
    assert "--prompts FILE" in capsys.readouterr().err and not err_out.exists()


def test_a_single_file_base_skips_the_swap_unless_given_a_pipeline(tmp_path, sd_dir):
    single = tmp_path / "base.safetensors"
    from safetensors.torch import load_file
    save_file(load_file(str(sd_dir / "unet" / "diffusion_pytorch_model.safetensors")), str(single))
    other = write_sd_folder(tmp_path / "other")
    out = tmp_path / "a"
    assert main(["analyze", str(single), str(other), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "analysis.json").read_text())
    assert report["summary"]["changed_layers"] == 0 and "--pipeline" in report["swap"]["note"]


def test_a_random_small_change_gives_the_isotropic_ratio():
    """The yardstick in the report: noise turns rows ~sqrt(pi d / 2) times more than it rescales them."""
    torch.manual_seed(0)
    w = torch.randn(4000, 64, dtype=torch.float64)
    stats = analysis.layer_stats("noise", w, w + 1e-4 * torch.randn(4000, 64, dtype=torch.float64))
    assert stats.isotropic_ratio == pytest.approx(math.sqrt(math.pi * 63 / 2), rel=0.02)
    assert stats.ratio == pytest.approx(stats.isotropic_ratio, rel=0.05)


def test_a_merged_single_file_reads_like_base_plus_adapter(tmp_path, sd_dir):
    """An LDM-layout single file (as ComfyUI/A1111 save them) is compared under diffusers names."""
    unet = tiny_unet()
    spec = students.AdapterSpec("lorad", 4, "unet-student")
    randomize(students.add_adapter(unet, spec), std=0.05)
    adapter = students.save_adapter_file(unet, spec, tmp_path / "a.safetensors")
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", "--base", str(sd_dir), "--adapter", str(adapter), "--out", str(merged)]) == 0
    base = open_source(sd_dir)
    via_adapter = analysis.analyse(base, open_source(adapter, base), progress=False)
    via_file = analysis.analyse(base, open_source(merged), progress=False)
    assert [layer.name for layer in via_adapter] == [layer.name for layer in via_file]
    for a, b in zip(via_adapter, via_file):
        assert a.direction_mean == pytest.approx(b.direction_mean, abs=1e-6)
