"""The whole story on the embedded world in one call (``wadi demo``).

Distil the shipped teacher into a one-step LoRaD student, evaluate teacher (25 steps, CFG) and student (1 step)
on held-out prompts, and write into one folder: ``grid.png`` (renders | teacher | student), ``loss.png``,
``report.md`` and ``metrics.json``. The distillation run stays in ``distill/`` (checkpoint, sample grids,
``student.safetensors``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from . import fileio, students
from .distill import CHECKPOINT, STATE_FILE, DistillConfig, Distiller, trainable_share
from .distill.processes import distill_in_processes
from .evaluate import evaluate_student, evaluate_teacher, reference_renders, render_floor
from .images import side_by_side
from .shapes import sample_prompts
from .shapes.components import MODEL_DIR

ATTRIBUTES = ("single/color", "single/shape", "single/size", "single/position", "relation/color",
              "relation/shape", "relation/relation")


def evaluate_teacher_and_student(student_path: Path, prompts: list[str], seed: int, progress: bool,
                                 device="auto") -> dict:
    """Held-out metrics and speed of the teacher (25-step DDIM, CFG 3) and the one-step student, drawn on
    ``device``."""
    teacher, teacher_images = evaluate_teacher(MODEL_DIR, prompts, seed, progress=progress, device=device)
    student, student_images = evaluate_student(MODEL_DIR, student_path, prompts, seed, progress=progress,
                                               device=device)
    return {"teacher": teacher, "student": student, "speedup": teacher["seconds"] / student["seconds"],
            "images": {"teacher": teacher_images, "student": student_images}}


def report_markdown(metrics: dict) -> str:
    t, s, c = metrics["teacher"], metrics["student"], metrics["config"]
    trained_as = students.AdapterSpec(c["student_kind"], c["student_rank"], c["student_preset"]).label()
    kind = "LoRaD" if c["student_kind"] == "lorad" else trained_as
    rows = [f"| | teacher (25-step DDIM, CFG 3) | one-step student ({kind}) | student / teacher |", "|---|---|---|---|"]
    for key in ATTRIBUTES:
        if key in t["prompt_accuracy"]:
            a, b = t["prompt_accuracy"][key], s["prompt_accuracy"][key]
            rows.append(f"| {key} accuracy | {a:.1%} | {b:.1%} | {b / a if a else float('nan'):.2f} |")
    rows.append(f"| domain FID (lower is better) | {t['fid']:.1f} | {s['fid']:.1f} | {s['fid'] / t['fid']:.2f} |")
    rows.append(f"| precision / recall | {t['precision']:.2f} / {t['recall']:.2f} | "
                f"{s['precision']:.2f} / {s['recall']:.2f} | |")
    rows.append(f"| images per second | {t['images_per_second']:.1f} | {s['images_per_second']:.1f} | "
                f"{metrics['speedup']:.1f}x faster |")
    p = metrics["parameters"]
    return "\n".join([
        "# wadi demo",
        "",
        f"The shipped shapes teacher was distilled into a one-step student ({trained_as}, learning rate "
        f"{c['lr_student']:g}) in {metrics['distillation_steps']} steps "
        f"({metrics['distillation_minutes']:.1f} min on this machine, "
        f"in {metrics.get('distillation_processes', 1)} process(es)). "
        f"Evaluated on {metrics['prompts']} held-out prompts (never seen in training); the judge reads colour, "
        "shape, size, position and relation back from the pixels.",
        "",
        *rows,
        "",
        f"Trainable parameters: student {p['student_trainable']:,} ({p['student_share']:.1%} of the UNet's "
        f"{p['unet_parameters']:,}), fake score model {p['fake_trainable']:,} ({p['fake_share']:.1%}).",
        f"FID of a second set of renders (the floor): {metrics['render_floor_fid']:.1f}.",
        "",
        "Files: `grid.png` (renders | teacher | student, same prompts and seeds), `loss.png`, `metrics.json`,",
        "`distill/student.safetensors` (use it with `wadi generate --student`), `distill/samples/`.",
        f"Whole demo: {metrics['total_minutes']:.1f} min.",
        "",
    ])


def distill(config: DistillConfig, processes: int, progress: bool) -> tuple[Path, DistillConfig, int, float]:
    """The student's path, the run's resolved config, its steps and training seconds: in this process, or in
    ``processes`` processes of one thread each (the same student: the batch is split, not changed)."""
    if processes == 1:
        distiller = Distiller(config, progress=progress)
        return distiller.run(), distiller.config, distiller.step, distiller.seconds
    resolved = config.resolved(processes=processes)
    resolved.check()  # refused here, before any process starts
    path = distill_in_processes(resolved, processes, progress)
    state = torch.load(Path(resolved.out) / CHECKPOINT / STATE_FILE, map_location="cpu", weights_only=True)
    return path, resolved, state["step"], state["seconds"]


def run_demo(out="wadi-demo", steps: int | None = None, num_prompts: int = 256, student_kind: str = "lorad",
             seed: int = 0, regression_pairs: int = 0, overwrite: bool = False, progress: bool = True,
             processes: int = 1, device="auto") -> dict:
    """Distil, evaluate and report into ``out``; returns the metrics (also in ``out``/metrics.json). With
    ``processes`` > 1 the distillation runs in that many one-thread processes, each with its share of the batch
    (docs/multi_gpu.md: on the 2-core VMs measured it was not faster). The evaluation draws on ``device``
    (``"auto"``: a CUDA GPU when there is one); the distillation runs where accelerate puts it."""
    started = time.perf_counter()
    with fileio.claim(out, overwrite) as out:
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        out.mkdir()
        config = DistillConfig.from_options(out=str(out / "distill"), student_kind=student_kind, steps=steps,
                                            seed=seed, regression_pairs=regression_pairs, report_to="none")
        student_path, resolved, distilled_steps, seconds = distill(config, processes, progress)
        minutes = seconds / 60
        shutil.copy(out / "distill" / "loss.png", out / "loss.png")

        prompts = [p.caption() for p in sample_prompts(num_prompts, "heldout", seed=seed)]
        result = evaluate_teacher_and_student(student_path, prompts, seed, progress, device)
        images = result.pop("images")
        shown = slice(0, 16)
        side_by_side({"render": reference_renders(prompts[shown], seed), "teacher 25 steps": images["teacher"][shown],
                      "student 1 step": images["student"][shown]}, prompts[shown]).save(out / "grid.png")
        metrics = {
            **result,
            "prompts": len(prompts),
            "render_floor_fid": render_floor(prompts, seed),
            "parameters": trainable_share(config),
            "config": resolved.options(),
            "distillation_steps": distilled_steps,
            "distillation_minutes": minutes,
            "distillation_processes": processes,
            "total_minutes": (time.perf_counter() - started) / 60,
        }
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (out / "report.md").write_text(report_markdown(metrics))
    return metrics
