"""``wadi demo`` and ``benchmarks/ablation.py`` end to end on the embedded teacher, with tiny budgets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from wadi_cli.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_demo_writes_its_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--num-prompts", "16", "--quiet"]) == 0
    for name in ("grid.png", "loss.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("teacher", "student"):
        assert {"fid", "prompt_accuracy", "images_per_second"} <= set(metrics[model])
    assert metrics["speedup"] > 1
    assert metrics["parameters"]["student_trainable"] == 611_712  # LoRaD rank 24 on unet-student
    report = (out / "report.md").read_text()
    assert "one-step student (LoRaD)" in report and "(lorad rank 24, learning rate 0.005)" in report
    assert (out / "distill" / "student.safetensors").is_file()
    assert main(["demo", "--out", str(out), "--steps", "1", "--quiet"]) == 2  # never replaced silently


def test_demo_in_two_processes_trains_the_student_of_one_and_says_how_long_it_will_take(tmp_path, capfd):
    """``--processes 2``: two one-thread processes with half the batch each."""
    import torch
    from safetensors.torch import load_file

    students = {}
    for processes in (1, 2):
        out = tmp_path / f"demo{processes}"
        assert main(["demo", "--out", str(out), "--steps", "12", "--num-prompts", "16", "--processes", str(processes),
                     "--quiet"]) == 0
        assert "s a step on this machine: about" in capfd.readouterr().out  # after 10 steps, before the rest
        metrics = json.loads((out / "metrics.json").read_text())
        assert (metrics["distillation_processes"], metrics["distillation_steps"]) == (processes, 12)
        assert metrics["config"]["batch_size"] == 16 // processes
        students[processes] = load_file(out / "distill" / "student.safetensors")
    # the same student but for the order of float sums (measured after 12 steps: at most 1.0e-3 of a tensor's largest
    # entry, median 9e-6; a process training on its half alone is off by 0.3 or more: tests/test_processes.py)
    for key, value in students[1].items():
        assert torch.allclose(students[2][key], value, rtol=0, atol=1e-2 * value.abs().max().item()), key


def test_ablation_table(tmp_path):
    from benchmarks.ablation import main as ablation

    # at step 1 fake == teacher, so the student gradient is zero: two steps are the least that trains
    assert ablation(["--out", str(tmp_path), "--steps", "2", "--kinds", "lorad", "full", "--seeds", "0",
                     "--num-prompts", "8", "--batch-size", "2", "--quiet"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    lorad, full = rows
    assert lorad["norm_change"] < 1e-6 < lorad["direction_change"]  # rotations keep every row's norm
    assert full["trainable"] > lorad["trainable"]
    assert "full fine-tuning" in (tmp_path / "table.md").read_text()


def test_ablation_keeps_only_rows_of_the_same_recipe():
    from argparse import Namespace
    from benchmarks.ablation import same_recipe
    args = Namespace(steps=800, fake_updates=3, ema=0.99, late_fraction=0.375)
    row = {"steps": 800, "fake_updates": 3, "ema": 0.99, "late_fraction": 0.375}
    assert same_recipe(row, args)
    assert not same_recipe({**row, "steps": 600}, args) and not same_recipe({**row, "late_fraction": 0.0}, args)
    assert not same_recipe({"steps": 800}, args)  # written before the recipe was recorded: 1 update, no EMA, ...
    assert same_recipe({"steps": 800}, Namespace(steps=800, fake_updates=1, ema=0.0, late_fraction=0.0))


def test_ablation_table_shows_a_spread_only_over_several_seeds():
    from benchmarks.ablation import summarise
    rows = json.loads((Path(__file__).parents[1] / "docs" / "ablation_results_demo_recipe.json").read_text())
    lorad = [r for r in rows if r["kind"] == "lorad"]
    three, one = summarise(lorad).splitlines()[2], summarise(lorad[:1]).splitlines()[2]
    assert "| 3 |" in three and "1223 ± 54 |" in three  # the measured mean ± standard deviation of three seeds
    assert "| 1 |" in one and "±" not in one and "| 1165 |" in one


def test_budget_curves_and_grid(tmp_path):
    """benchmarks/budget.py draws the shipped results and a grid of the teacher beside a student."""
    from PIL import Image

    from benchmarks.budget import main as budget
    from wadi_core import students
    from wadi_core.models import load_components

    unet = load_components().unet  # the embedded teacher with a fresh LoRaD student on it
    spec = students.AdapterSpec("lorad", 4, "unet-student")
    students.add_adapter(unet, spec)
    students.save_adapter_file(unet, spec, tmp_path / "student.safetensors")
    assert budget(["curves", str(Path(__file__).parents[1] / "docs" / "budget_results.json"),
                   str(tmp_path / "curves.png")]) == 0
    assert budget(["grid", str(tmp_path / "grid.png"), f"fresh={tmp_path / 'student.safetensors'}", "--count",
                   "2"]) == 0
    assert Image.open(tmp_path / "curves.png").size == (1200, 750)
    assert Image.open(tmp_path / "grid.png").size == (220 + 2 * 96, 16 + 2 * 96)  # teacher and student, 2 prompts
