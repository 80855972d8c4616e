"""The distillation's nested config, its flat options, the resume rule each field declares, and the recipes that
follow the teacher's family (never its path)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import write_sd_folder
from wadi_core.distill import RECIPES, DistillConfig, Distiller
from wadi_core.distill.config import FREE, MATCH, MAY_CHANGE, OPTIONS, leaf_paths
from wadi_core.shapes.components import MODEL_DIR

PROMPTS = ["a red circle", "a blue square on the left", "a green triangle above a red circle", "a yellow square"]


def test_every_field_has_one_option_and_declares_its_resume_rule():
    assert sorted(OPTIONS.values()) == sorted(leaf_paths())  # one flat option per field, no field without one
    config = DistillConfig()
    rules = {name: config.rule(name) for name in OPTIONS}
    assert set(rules.values()) == {MATCH, MAY_CHANGE, FREE}
    assert {n for n, r in rules.items() if r == MAY_CHANGE} == {"lr_student", "lr_fake", "mixed_precision"}
    assert rules["student_rank"] == rules["gan_weight"] == rules["late_t_max"] == rules["recipe"] == MATCH
    assert rules["steps"] == rules["out"] == rules["sample_every"] == FREE


def test_options_round_trip_and_old_spellings():
    config = DistillConfig.from_options(out="x", student_kind="lora", student_rank=4, lr_fake=3e-3, gan_weight=0.5,
                                        late_fraction=0.25, regression_pairs=8)
    assert (config.student.kind, config.student.rank, config.fake.lr) == ("lora", 4, 3e-3)
    assert (config.extras.gan.weight, config.timesteps.late_fraction, config.extras.regression.pairs) == (0.5, 0.25, 8)
    assert DistillConfig.from_options(**config.options()) == config
    old = DistillConfig.from_options(out="x", teacher="/models/sd15", student="dora", fake="full")
    assert (old.model, old.student.kind, old.fake.kind) == ("/models/sd15", "dora", "full")
    with pytest.raises(TypeError, match="unknown distillation option 'student_rnak'"):
        DistillConfig.from_options(student_rnak=4)


def sd15_shaped_folder(root):
    """A diffusers UNet folder whose weights' names and shapes are SD1.5's (one tensor is enough to tell)."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    save_file({"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768)},
              str(root / "diffusion_pytorch_model.safetensors"))
    return root


def test_the_recipe_follows_the_teachers_family_not_its_path(tmp_path):
    copy = tmp_path / "my-renamed-model"
    shutil.copytree(MODEL_DIR, copy)  # the embedded model under another name keeps its recipe
    for model in (None, str(copy)):
        config = DistillConfig.from_options(out="x", model=model).resolved()
        assert config.recipe == "shapes" and (config.student.rank, config.steps, config.batch_size) == (24, 800, 16)
    sd15 = DistillConfig.from_options(out="x", model=str(sd15_shaped_folder(tmp_path / "sd15"))).resolved()
    assert sd15.recipe == "paper" and (sd15.student.rank, sd15.steps, sd15.batch_size, sd15.student.lr) == \
        (256, 20000, 128, 1e-4)
    unknown = DistillConfig.from_options(out="x", model=str(write_sd_folder(tmp_path / "tiny"))).resolved()
    assert unknown.recipe == "paper"  # an architecture we do not know gets the paper's reference values
    chosen = DistillConfig.from_options(out="x", recipe="paper").resolved()  # --recipe overrides the family's
    assert chosen.recipe == "paper" and chosen.student.rank == 256 and chosen.model == str(MODEL_DIR)
    sdxl_shaped = tmp_path / "sdxl"
    sdxl_shaped.mkdir()
    (sdxl_shaped / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    save_file({"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 2048),
               "add_embedding.linear_1.weight": torch.zeros(1, 1)}, str(sdxl_shaped / "diffusion_pytorch_model.safetensors"))
    sdxl = DistillConfig.from_options(out="x", model=str(sdxl_shaped)).resolved()
    assert sdxl.recipe == "sdxl" and (sdxl.student.rank, sdxl.guidance, sdxl.fake_updates, sdxl.batch_size) == \
        (128, 8.0, 5, 128)
    assert set(RECIPES) == {"paper", "shapes", "sdxl"}


def test_a_copied_embedded_teacher_trains_on_its_world(tmp_path):
    """The world (training prompts, sample prompts) comes with the family: a copy needs no prompt file."""
    copy = tmp_path / "copy"
    shutil.copytree(MODEL_DIR, copy)
    run = Distiller(DistillConfig.from_options(out=str(tmp_path / "run"), model=str(copy), steps=1, batch_size=2,
                                               student_rank=2, fake_rank=2, sample_every=0, report_to="none"),
                    progress=False)
    assert run.world.name == "the shapes world" and len(run.prompts) > 100
    run.close()


def write_real_images(folder, count=3):
    import numpy as np
    from PIL import Image
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"real{i}.png")
    return folder


def test_the_gan_term_reaches_the_student_when_regression_pairs_are_on(tmp_path):
    """The student's loss once dropped DMD2's GAN term whenever DMD's regression pairs were on too: one step with
    both terms must move the student differently from one step with the regression term alone."""
    sd = write_sd_folder(tmp_path / "sd")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = dict(model=str(sd), prompts=str(prompts), steps=1, batch_size=4, student_rank=4, fake_rank=2,
                  lr_student=1e-2, lr_fake=1e-2, guidance=1.5, regression_pairs=3, sample_every=0, report_to="none")
    students = {}
    for name, gan_weight in (("regression", 0.0), ("both", 5.0)):
        extra = dict(gan_weight=gan_weight, gan_images=str(write_real_images(tmp_path / f"real-{name}"))) \
            if gan_weight else {}
        run = Distiller(DistillConfig.from_options(out=str(tmp_path / name), **common, **extra), progress=False)
        students[name] = load_file(str(run.run()))
    assert any(not torch.equal(students["both"][k], students["regression"][k]) for k in students["both"])
