"""DreamBooth with LoRaD / LoRA / full adapters: training, the adapter file, stacking on the student, the
embedded subject's judge and the commands."""

import json

import numpy as np
import pytest
import torch

from wadi_cli.cli import main
from wadi_core.tasks import dreambooth as D
from wadi_core import students
from wadi_core.sampling import onestep
from wadi_core.shapes import novel, render_batch, sample_scenes
from wadi_core.models import load_components
from wadi_core.shapes.render import render


def subject_images(n=4):
    rng = np.random.default_rng(0)
    return np.stack([np.asarray(render(novel.subject_scene(rng))) for _ in range(n)])


def test_the_subject_judge_tells_diamonds_from_the_worlds_shapes():
    assert all(novel.subject_checks(img, "orange")["diamond"] for img in subject_images(40))
    world = render_batch(sample_scenes(200, "heldout", seed=1, relation_share=0))
    assert not any(novel.subject_checks(img)["diamond"] for img in world)


@pytest.mark.parametrize("kind", ["lorad", "lora", "full"])
def test_training_changes_the_model_and_the_file_reloads(kind, tmp_path):
    model = load_components()
    config = D.DreamBoothConfig(adapter=students.AdapterSpec(kind, 4, "unet-student"), steps=2, batch_size=2)
    history = D.train_subject(model, subject_images(), subject_images(), config)
    assert len(history) == 2 and all(np.isfinite(h["instance"]) and h["prior"] > 0 for h in history)
    path = students.save_adapter_file(model.unet, config.adapter, tmp_path / "subject.safetensors")
    noise = torch.randn(2, 4, 8, 8)
    text = model.encode_prompts(["a sks square"] * 2)
    with torch.no_grad():
        trained = model.unet(noise, torch.tensor([500, 500]), text).sample
        fresh = load_components()
        untouched = fresh.unet(noise, torch.tensor([500, 500]), text).sample
        students.apply_adapter_file(fresh.unet, path)
        reloaded = fresh.unet(noise, torch.tensor([500, 500]), text).sample
    assert not torch.allclose(trained, untouched, atol=1e-5)
    assert torch.allclose(trained, reloaded, atol=1e-4)


def test_a_lorad_subject_stacks_onto_the_lorad_student_exactly(tmp_path):
    """Rotations of the same weight pairs add, so student + subject adapters == the subject trained on the
    merged student, applied to it."""
    teacher = load_components()
    students.add_adapter(teacher.unet, students.AdapterSpec("lorad", 4, "unet-student"), "student")
    with torch.no_grad():
        for name, p in teacher.unet.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    student = students.save_adapter_file(teacher.unet, students.AdapterSpec("lorad", 4, "unet-student"),
                                         tmp_path / "student.safetensors", name="student")
    model = load_components()
    D.prepare_unet(model, str(student))
    config = D.DreamBoothConfig(steps=2, batch_size=2)
    D.train_subject(model, subject_images(), subject_images(), config)
    subject = students.save_adapter_file(model.unet, config.adapter, tmp_path / "subject.safetensors")
    with torch.no_grad():
        trained = onestep.generate(model, ["a sks square"], [3], progress=False)
        stacked = load_components()
        students.apply_adapter_file(stacked.unet, student, name="student")
        students.apply_adapter_file(stacked.unet, subject, name="subject")
        again = onestep.generate(stacked, ["a sks square"], [3], progress=False)
    assert np.abs(trained.astype(int) - again.astype(int)).max() <= 2


def test_bad_dreambooth_input_is_named():
    with pytest.raises(ValueError, match="instance prompt is empty"):
        D.check_prompts(D.DreamBoothConfig(instance_prompt=" "))
    with pytest.raises(ValueError, match="add a rare identifier"):
        D.check_prompts(D.DreamBoothConfig(instance_prompt="an orange square"))
    with pytest.raises(ValueError, match="needs class images"):
        D.train_subject(load_components(), subject_images(), None, D.DreamBoothConfig(steps=1))


def test_dreambooth_commands_end_to_end(tmp_path, capsys):
    out = tmp_path / "db"
    assert main(["dreambooth", "--out", str(out), "--steps", "2", "--count", "3", "--num-class-images", "2",
                 "--batch-size", "2", "--quiet"]) == 0
    for name in ("subject.safetensors", "loss.png", "samples.png", "instance/00.png", "class_images/000.png"):
        assert (out / name).is_file(), name
    assert students.read_spec(out / "subject.safetensors").kind == "lorad"
    assert main(["dreambooth-eval", "--adapter", str(out / "subject.safetensors"), "--count", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["results"]) == {"subject", "recoloured", "placed", "class"}
    assert {"diamond", "color", "diversity"} <= set(metrics["results"]["subject"])
    assert main(["dreambooth", "--out", str(tmp_path / "bad"), "--on", "student", "--quiet"]) == 2
    assert "--on student needs --student" in capsys.readouterr().err
    assert main(["dreambooth", "--out", str(tmp_path / "bad"), "--instance-dir", str(tmp_path / "nowhere"),
                 "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
