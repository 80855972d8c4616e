"""``wadi distill``: the training loop, checkpoints, exact resume, bad input, student files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_sd_folder, write_sdxl_folder
from wadi_cli.cli import main
from wadi_core.distill import DistillConfig, Distiller, Diverged, ResumeMismatch
from wadi_core import students
from wadi_core.distill import losses as vsd
from wadi_core.sampling import onestep
from wadi_core.prompts import PromptFileError
from wadi_core.models import load_components
from wadi_core.shapes.components import MODEL_DIR

PROMPTS = ["a red circle", "a blue square on the left", "a green triangle above a red circle", "a yellow square"]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def config(tmp_path, sd_dir, prompt_file, name="run", **kw):
    base = dict(out=str(tmp_path / name), model=str(sd_dir), prompts=str(prompt_file), steps=4, batch_size=2,
                student_rank=4, fake_rank=2, lr_student=1e-2, lr_fake=1e-2, guidance=1.5, checkpoint_every=2,
                sample_every=0, report_to="none")
    return DistillConfig.from_options(**{**base, **kw})


@pytest.fixture(params=["epsilon", "v_prediction", "sdxl"])
def any_sd_dir(request, tmp_path):
    """A tiny SD folder of each supported parameterisation (eps-prediction as SD1.5, v-prediction as SD2.1-768) and a
    tiny SDXL folder (two text encoders, pooled embedding and time ids)."""
    if request.param == "sdxl":
        return write_sdxl_folder(tmp_path / "sdxl")
    return write_sd_folder(tmp_path / f"sd-{request.param}", prediction_type=request.param)


def test_resumed_run_equals_uninterrupted_run(tmp_path, any_sd_dir, prompt_file):
    sd_dir = any_sd_dir
    whole = Distiller(config(tmp_path, sd_dir, prompt_file, "whole", sample_every=100), progress=False)
    whole.run()
    first = Distiller(config(tmp_path, sd_dir, prompt_file, "parts", sample_every=100), progress=False)
    assert first.run(should_stop=lambda: first.step == 2) is None  # stopped with a checkpoint
    assert (tmp_path / "parts" / "checkpoint" / "state.pt").is_file()
    second = Distiller(config(tmp_path, sd_dir, prompt_file, "parts", resume=True, sample_every=100), progress=False)
    assert second.step == 2
    second.run()
    a = load_file(tmp_path / "whole" / "student.safetensors")
    b = load_file(tmp_path / "parts" / "student.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any(v.abs().max() > 0 for k, v in a.items() if k.endswith("lorad_up"))  # the student did train
    history = json.loads((tmp_path / "parts" / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for name in ("loss.png", "samples/latest.png"):
        assert (tmp_path / "parts" / name).read_bytes()[:4] == b"\x89PNG"


def test_resume_with_other_settings_is_refused(tmp_path, sd_dir, prompt_file):
    Distiller(config(tmp_path, sd_dir, prompt_file, steps=2), progress=False).run()
    with pytest.raises(ResumeMismatch, match="student_rank=4.*student_rank=8"):
        Distiller(config(tmp_path, sd_dir, prompt_file, steps=3, student_rank=8, resume=True), progress=False)
    with pytest.raises(ResumeMismatch, match="student_kind='lorad'.*student_kind='lora'"):
        Distiller(config(tmp_path, sd_dir, prompt_file, steps=3, student_kind="lora", resume=True), progress=False)


def test_fake_guidance_sets_the_fake_models_cfg_alone(tmp_path, sd_dir, prompt_file):
    run = Distiller(config(tmp_path, sd_dir, prompt_file, steps=2, fake_guidance=1.0), progress=False)
    model, n = run.accelerator.unwrap_model(run.fake), 2
    x, t = torch.randn(n, *run.shape), torch.tensor([500, 900])
    cond = run.embed(["a red circle", "a yellow square"])
    with torch.no_grad():
        plain, uncond = model(x, t, cond).sample, model(x, t, run.null.expand(n, -1, -1)).sample
        # scale 1: the conditional prediction from one call on the conditional half alone
        torch.testing.assert_close(run._eps(model, x, t, cond, 1.0), plain)
        torch.testing.assert_close(run._eps(model, x, t, cond, 3.0), uncond + 3 * (plain - uncond),
                                   rtol=1e-4, atol=1e-4)
    batches = []
    model.register_forward_pre_hook(lambda module, inputs: batches.append(inputs[0].shape[0]))
    run.run()
    assert batches and set(batches) == {run.config.batch_size}  # never the doubled CFG batch
    with pytest.raises(ResumeMismatch, match="fake_guidance=1.0.*fake_guidance=None"):
        Distiller(config(tmp_path, sd_dir, prompt_file, steps=3, resume=True), progress=False)
    with pytest.raises(ValueError, match="--fake-guidance"):
        config(tmp_path, sd_dir, prompt_file, fake_guidance=0.5).resolved("paper").check()


def test_student_ema_is_on_for_the_embedded_world_and_off_for_other_teachers(tmp_path, sd_dir):
    # The embedded default (0.99) was measured in docs/lab/results.md; a real teacher keeps the paper's default (off).
    assert DistillConfig.from_options(out="x").resolved("shapes").ema == 0.99
    assert DistillConfig.from_options(out="x", model=str(sd_dir)).resolved("paper").ema == 0.0
    assert DistillConfig.from_options(out="x", ema=0.0).resolved("shapes").ema == 0.0


def test_embedded_world_guides_the_teacher_alone_and_other_teachers_guide_both(sd_dir):
    # Embedded: teacher CFG 2, unguided fake (docs/lab/results.md); a real teacher: the paper's CFG 1.5 on both.
    embedded = DistillConfig.from_options(out="x").resolved("shapes")
    assert (embedded.guidance, embedded.fake_guidance) == (2.0, 1.0)
    paper = DistillConfig.from_options(out="x", model=str(sd_dir)).resolved("paper")
    assert (paper.guidance, paper.fake_guidance) == (1.5, None)
    assert DistillConfig.from_options(out="x", fake_guidance=2.0).resolved("shapes").fake_guidance == 2.0


def test_each_adapter_kind_takes_its_own_default_learning_rate(sd_dir):
    # LoRaD's angles take 5e-3 on the embedded world; additive factors and raw weights would diverge or drift there
    # (the ablation's and session 11's measured rates); a real teacher's full UNet gets DMD2's SD1.5 rate.
    def rates(embedded, **kinds):
        c = DistillConfig.from_options(out="x", model=str(MODEL_DIR if embedded else sd_dir), **kinds).resolved()
        return c.student.lr, c.fake.lr
    assert rates(True) == (5e-3, 1e-2)
    assert rates(True, student_kind="lora", fake_kind="lora") == (1e-3, 3e-3)
    assert rates(True, student_kind="dora", fake_kind="full") == (1e-3, 5e-4)
    assert rates(True, student_kind="full") == (1e-4, 1e-2)
    assert rates(False) == (1e-4, 1e-2)  # the paper's
    assert rates(False, student_kind="full", fake_kind="full") == (1e-5, 1e-5)
    assert rates(False, student_kind="lora") == (1e-4, 1e-2)
    assert rates(True, student_kind="full", lr_student=3e-4) == (3e-4, 1e-2)  # a given rate is kept


def test_a_non_empty_output_folder_is_not_reused_silently(tmp_path, sd_dir, prompt_file):
    Distiller(config(tmp_path, sd_dir, prompt_file, steps=1), progress=False).run()
    with pytest.raises(FileExistsError, match="--resume"):
        Distiller(config(tmp_path, sd_dir, prompt_file, steps=1), progress=False)


def test_interval_zero_switches_checkpoints_before_the_end_and_samples_off(tmp_path, sd_dir, prompt_file):
    def steps_written(**intervals):
        run = Distiller(config(tmp_path, sd_dir, prompt_file, steps=3, overwrite=True, **intervals), progress=False)
        written, saved, save = [], [], run.save_checkpoint
        run.write_samples = lambda: written.append(run.step)
        run.save_checkpoint = lambda: (saved.append(run.step), save())
        run.run()
        return written, saved

    assert steps_written(checkpoint_every=2, sample_every=2) == ([0, 2, 3], [2, 3])  # and at the start and the end
    assert steps_written(checkpoint_every=0, sample_every=0) == ([], [3])  # no grid; the final checkpoint only
    assert (tmp_path / "run" / "student.safetensors").is_file()
    with pytest.raises(ValueError, match="0 \\(off\\) or more"):
        Distiller(config(tmp_path, sd_dir, prompt_file, "bad", sample_every=-1), progress=False)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, sd_dir, prompt_file, monkeypatch):
    run = Distiller(config(tmp_path, sd_dir, prompt_file, steps=10, max_bad_steps=3), progress=False)
    good_loss = vsd.generator_loss
    monkeypatch.setattr(vsd, "generator_loss",
                        lambda x0, grad: good_loss(x0, grad) * (float("nan") if run.step >= 2 else 1.0))
    with pytest.raises(Diverged, match="3 steps in a row"):
        run.run()
    saved = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    assert saved["step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["student"].values())


def test_a_v_prediction_teachers_scores_are_turned_into_eps(tmp_path, prompt_file):
    teacher = write_sd_folder(tmp_path / "vpred", prediction_type="v_prediction")
    run = Distiller(config(tmp_path, teacher, prompt_file, steps=1), progress=False)
    assert run.prediction == "v_prediction"
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, *run.shape, generator=g)
    t = torch.tensor([100, 900])
    cond = run.embed(PROMPTS[:2])
    with torch.no_grad():
        v = run.teacher.unet(x_t, t, cond).sample
        a = run.abar[t].view(-1, 1, 1, 1)
        assert torch.allclose(run._eps(run.teacher.unet, x_t, t, cond, 1.0), (1 - a).sqrt() * x_t + a.sqrt() * v,
                              atol=1e-5)
    run.close()
    with pytest.raises(ValueError, match="predicts 'sample'"):
        Distiller(config(tmp_path, write_sd_folder(tmp_path / "x0", prediction_type="sample"), prompt_file,
                         name="refused"), progress=False)


def test_empty_or_missing_prompt_file(tmp_path, sd_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(PromptFileError):
        Distiller(config(tmp_path, sd_dir, empty), progress=False)
    assert main(["distill", "--out", str(tmp_path / "x"), "--teacher", str(sd_dir), "--prompts",
                 str(tmp_path / "missing.txt")]) == 2


@pytest.mark.parametrize("kind", ["lora", "dora", "full"])
def test_other_student_types_train_and_reload(tmp_path, sd_dir, prompt_file, kind):
    run = Distiller(config(tmp_path, sd_dir, prompt_file, steps=2, student_kind=kind, fake_kind=kind if kind != "full" else
                           "lorad"), progress=False)
    path = run.run()
    assert students.read_spec(path).kind == kind
    expected = run.student_images(PROMPTS[:2], [0, 1])
    teacher = load_components(sd_dir)
    students.apply_adapter_file(teacher.unet, path)
    got = onestep.generate(teacher, PROMPTS[:2], [0, 1], progress=False)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_student_file_loads_for_generation_and_merged_export_matches(tmp_path, any_sd_dir, prompt_file, capsys):
    sd_dir = any_sd_dir
    merged = tmp_path / "merged"
    run = Distiller(config(tmp_path, sd_dir, prompt_file, steps=3, export_merged=str(merged)), progress=False)
    path = run.run()
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(sd_dir), "--student", str(path), "--prompt", PROMPTS[0],
                 "--out", str(out), "--quiet"]) == 0
    assert "distilled from" not in capsys.readouterr().out  # on its own teacher: nothing to say
    # on another model of the same architecture: it loads, with a note naming its own teacher
    assert main(["generate", "--model", str(merged), "--student", str(path), "--prompt", PROMPTS[0],
                 "--out", str(tmp_path / "gen-other"), "--quiet"]) == 0
    assert f"distilled from {sd_dir.resolve()}" in capsys.readouterr().out
    out_merged = tmp_path / "gen-merged"
    assert main(["generate", "--model", str(merged), "--one-step", "--prompt", PROMPTS[0],
                 "--out", str(out_merged), "--quiet"]) == 0
    from PIL import Image
    a = np.asarray(Image.open(next(out.glob("0000_*.png")))).astype(int)
    b = np.asarray(Image.open(next(out_merged.glob("0000_*.png")))).astype(int)
    assert np.abs(a - b).max() <= 1


def test_a_student_with_convolutions_trains_reloads_and_merges(tmp_path, sd_dir, prompt_file):
    """--student-preset unet-student-conv (ours): the convolutions turn too, and the adapter file and the merged
    export draw what the trained student drew."""
    merged = tmp_path / "merged"
    run = Distiller(config(tmp_path, sd_dir, prompt_file, steps=2, student_preset="unet-student-conv",
                           export_merged=str(merged)), progress=False)
    path = run.run()
    layers = {k.rsplit(".", 1)[0] for k in load_file(path) if k.endswith(".lorad_up")}
    assert any(k.endswith("resnets_0_conv1") for k in layers)  # adapter files use kohya-style names
    expected = run.student_images(PROMPTS[:2], [0, 1])
    teacher = load_components(sd_dir)
    students.apply_adapter_file(teacher.unet, path)
    assert np.abs(onestep.generate(teacher, PROMPTS[:2], [0, 1], progress=False).astype(int)
                  - expected.astype(int)).max() <= 1
    assert np.abs(onestep.generate(load_components(merged), PROMPTS[:2], [0, 1], progress=False).astype(int)
                  - expected.astype(int)).max() <= 1


def test_a_lora_student_cannot_be_loaded_on_another_base(tmp_path, sd_dir, prompt_file):
    path = Distiller(config(tmp_path, sd_dir, prompt_file, steps=1), progress=False).run()
    other = load_components()  # the embedded shapes model: another architecture
    with pytest.raises(students.AdapterError):
        students.apply_adapter_file(other.unet, path)


def test_bf16_mixed_precision_with_gradient_checkpointing_and_accumulation(tmp_path, sd_dir, prompt_file):
    run = Distiller(config(tmp_path, sd_dir, prompt_file, steps=2, mixed_precision="bf16", gradient_checkpointing=True,
                           grad_accum=2, ema=0.9), progress=False)
    run.run()
    assert all(not r["skipped"] and np.isfinite(r["loss_student"]) for r in run.history)
    assert run.teacher.unet.dtype == torch.bfloat16  # frozen weights in half precision, adapters in float32
    assert all(p.dtype == torch.float32 for p in run.student_params)


@pytest.mark.parametrize("fake_updates", [1, 2])
def test_micro_batches_train_the_student_of_their_whole_batch(tmp_path, sd_dir, prompt_file, fake_updates):
    """--grad-accum 2 x batch 2 takes the optimiser steps of batch 4: for each network one a step (the fake model
    --fake-updates), on the mean gradient of the 4 samples (the same draws; the sums in another order), where batch 2
    alone is another student."""
    students_of, runs = {}, {}
    for name, options in (("whole", dict(batch_size=4)), ("micro", dict(batch_size=2, grad_accum=2)),
                          ("half", dict(batch_size=2))):
        runs[name] = Distiller(config(tmp_path, sd_dir, prompt_file, name, steps=3, checkpoint_every=0,
                                      fake_updates=fake_updates, **options), progress=False)
        students_of[name] = load_file(runs[name].run())
    for opt, steps in ((runs["micro"].opt_student, 3), (runs["micro"].opt_fake, 3 * fake_updates)):
        assert {int(state["step"]) for state in opt.state_dict()["state"].values()} == {steps}
    whole, micro = students_of["whole"], students_of["micro"]
    assert any(v.abs().max() > 0 for k, v in micro.items() if k.endswith("lorad_up"))  # it did train
    for key in whole:
        scale = whole[key].abs().max().item()
        assert (whole[key] - micro[key]).abs().max().item() <= 1e-3 * scale, key
    assert max((whole[k] - students_of["half"][k]).abs().max().item() / whole[k].abs().max().item()
               for k in whole) > 0.1
    assert [h["loss_fake"] for h in runs["micro"].history] == pytest.approx(
        [h["loss_fake"] for h in runs["whole"].history], rel=1e-4)


def test_the_default_batch_is_the_recipes_whole_batch_split_over_processes_and_micro_batches(sd_dir, prompt_file):
    assert DistillConfig.from_options(model=str(sd_dir), grad_accum=4).resolved(processes=2).batch_size == 16  # 128
    with pytest.raises(ValueError, match=r"batch of 128 prompts does not split over 2 processes x 3 micro-batches "
                                         r"\(--grad-accum\); give each micro-batch its share with --batch-size N"):
        DistillConfig.from_options(model=str(sd_dir), grad_accum=3).resolved(processes=2)


def test_the_student_file_holds_the_ema_weights(tmp_path, sd_dir, prompt_file):
    run = Distiller(config(tmp_path, sd_dir, prompt_file, steps=2, ema=0.5, checkpoint_every=0), progress=False)
    saved = load_file(run.run())
    live = {key: value.clone() for key, value in run.trained_state("student").items()}
    run.ema.swap()
    average = run.trained_state("student")
    assert all(torch.equal(saved[key], average[key].float()) for key in saved)
    assert not all(torch.equal(saved[key], live[key].float()) for key in saved)


def test_student_every_keeps_the_student_each_step_would_have_finished_with(tmp_path, sd_dir, prompt_file):
    """``--student-every 2`` of a 4-step run keeps step 2's student: the one a run stopped at step 2 and finished
    there (``--resume --steps 2``) writes, EMA weights and metadata alike."""
    from safetensors import safe_open

    kept = Distiller(config(tmp_path, sd_dir, prompt_file, "kept", ema=0.5, student_every=2, checkpoint_every=0),
                     progress=False)
    kept.run()
    assert sorted(p.name for p in (tmp_path / "kept" / "students").iterdir()) == ["student-step000002.safetensors"]
    stopped = Distiller(config(tmp_path, sd_dir, prompt_file, "stopped", ema=0.5), progress=False)
    assert stopped.run(should_stop=lambda: stopped.step == 2) is None
    Distiller(config(tmp_path, sd_dir, prompt_file, "stopped", ema=0.5, steps=2, resume=True), progress=False).run()
    a = load_file(tmp_path / "kept" / "students" / "student-step000002.safetensors")
    b = load_file(tmp_path / "stopped" / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    final = load_file(tmp_path / "kept" / "student.safetensors")
    assert not all(torch.equal(a[key], final[key]) for key in a)  # two more steps changed it
    with safe_open(tmp_path / "kept" / "students" / "student-step000002.safetensors", "pt") as f:
        assert f.metadata()["wadi.steps"] == "2"
    Distiller(config(tmp_path, sd_dir, prompt_file, "kept", steps=1, overwrite=True), progress=False).run()
    assert not (tmp_path / "kept" / "students").exists()  # --overwrite clears the old run's students
    with pytest.raises(ValueError, match="--student-every"):
        config(tmp_path, sd_dir, prompt_file, student_every=-1).resolved().check()


def test_one_step_matches_diffusers_pipeline_with_lcm_scheduler_at_999(sd_dir):
    """Other tools reach the same one-step image: diffusers' pipeline with LCMScheduler, timesteps=[999]."""
    from diffusers import LCMScheduler, StableDiffusionPipeline

    components = load_components(sd_dir)
    ours = onestep.generate(components, [PROMPTS[0]], [3], progress=False)
    pipe = StableDiffusionPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                   tokenizer=components.tokenizer, unet=components.unet,
                                   scheduler=LCMScheduler.from_config(components.scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    size = components.unet.config.sample_size * pipe.vae_scale_factor
    latents = torch.randn((1, 4, components.unet.config.sample_size, components.unet.config.sample_size),
                          generator=torch.Generator().manual_seed(3))
    theirs = pipe(PROMPTS[0], height=size, width=size, timesteps=[999], guidance_scale=1.0, latents=latents,
                  output_type="np").images
    theirs = (theirs * 255).round().astype(np.uint8)
    assert np.abs(theirs.astype(int) - ours.astype(int)).max() <= 2


def test_regression_pairs_pull_the_student_toward_the_teacher_samples(tmp_path, sd_dir, prompt_file):
    d = Distiller(config(tmp_path, sd_dir, prompt_file, "reg", regression_pairs=3, batch_size=4, steps=2),
                  progress=False)
    pairs = d.extras.pairs
    assert pairs["latents"].shape == (3, *d.shape) and set(pairs["prompts"]) <= set(PROMPTS)
    d.run()
    history = json.loads((tmp_path / "reg" / "history.json").read_text())
    assert all(h["loss_regression"] > 0 for h in history)
    # The pairs are remade from the seed on resume, and a checkpoint from before the option resumes without it.
    resumed = Distiller(config(tmp_path, sd_dir, prompt_file, "reg", regression_pairs=3, batch_size=4, steps=3,
                               resume=True), progress=False)
    assert torch.equal(resumed.extras.pairs["latents"], pairs["latents"])
    with pytest.raises(ResumeMismatch, match="regression_pairs=3.*regression_pairs=0"):
        Distiller(config(tmp_path, sd_dir, prompt_file, "reg", batch_size=4, steps=3, resume=True), progress=False)


def test_regression_loss_is_the_latent_mse():
    x0, target = torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8)
    assert vsd.regression_loss(x0, target).item() == 1.0
    assert vsd.regression_loss(target, target).item() == 0.0


def write_real_images(folder, count=3):
    from PIL import Image
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"real{i}.png")
        if i:  # one image without a caption: it is shown to the discriminator with the empty prompt
            (folder / f"real{i}.txt").write_text(PROMPTS[i] + "\n")
    return folder


def test_gan_term_trains_its_head_logs_both_losses_and_resumes_exactly(tmp_path, sd_dir, prompt_file):
    real = write_real_images(tmp_path / "real")
    kw = dict(gan_weight=0.5, gan_disc_weight=0.1, gan_images=str(real))
    whole = Distiller(config(tmp_path, sd_dir, prompt_file, "whole", **kw), progress=False)
    assert whole.extras.real["captions"] == ["", PROMPTS[1], PROMPTS[2]]
    initial = {k: v.clone() for k, v in whole.extras.unwrapped_head().state_dict().items()}
    whole.run()
    trained = whole.extras.unwrapped_head().state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)  # the head did learn
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert all(h["loss_gan"] > 0 and h["loss_discriminator"] > 0 for h in history)

    first = Distiller(config(tmp_path, sd_dir, prompt_file, "parts", **kw), progress=False)
    first.run(should_stop=lambda: first.step == 2)
    second = Distiller(config(tmp_path, sd_dir, prompt_file, "parts", resume=True, **kw), progress=False)
    second.run()
    a = load_file(tmp_path / "whole" / "student.safetensors")
    b = load_file(tmp_path / "parts" / "student.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ResumeMismatch, match="gan_weight=0.5.*gan_weight=0.0"):
        Distiller(config(tmp_path, sd_dir, prompt_file, "parts", steps=5, resume=True), progress=False)


def test_gan_generator_pass_reaches_the_student_and_leaves_the_fake_model_alone(tmp_path, sd_dir, prompt_file):
    d = Distiller(config(tmp_path, sd_dir, prompt_file, gan_weight=1.0, gan_images=str(write_real_images(
        tmp_path / "real"))), progress=False)
    x0, noise, t = torch.randn(2, *d.shape, requires_grad=True), torch.randn(2, *d.shape), torch.tensor([100, 700])
    cond = d.embed(PROMPTS[:2])
    loss, record = d.extras.student_loss(x0, noise, t, cond, pick=None)
    loss.backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0 and record["loss_gan"] > 0
    assert all(p.grad is None and p.requires_grad for p in d.fake_params)  # frozen only for the pass


def test_gan_term_needs_real_images_for_other_teachers(tmp_path, sd_dir, prompt_file):
    with pytest.raises(ValueError, match="--gan-images FOLDER"):
        Distiller(config(tmp_path, sd_dir, prompt_file, gan_weight=0.1), progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Distiller(config(tmp_path, sd_dir, prompt_file, gan_weight=0.1, gan_images=str(tmp_path / "nope")),
                  progress=False)


def test_gan_term_renders_the_prompts_of_the_embedded_world(tmp_path):
    from wadi_core.shapes.judge import judge
    from wadi_core.models import decode
    bad = tmp_path / "bad.txt"
    bad.write_text("a red circle\na photo of a cat\n")
    with pytest.raises(ValueError, match="'a photo of a cat' is not a prompt of the shapes world"):
        Distiller(DistillConfig.from_options(out=str(tmp_path / "bad"), prompts=str(bad), gan_weight=0.1,
                                             report_to="none"), progress=False)
    d = Distiller(DistillConfig.from_options(out=str(tmp_path / "run"), gan_weight=0.1, report_to="none"),
                  progress=False)
    prompts = [d.prompts[0], d.prompts[-1]]  # a single-object and a relation prompt of the training split
    d.extras.before_fake_updates(prompts, torch.Generator().manual_seed(0))
    latents, cond = d.extras._real_batch
    assert latents.shape == (2, *d.shape) and torch.equal(cond, d.embed(prompts))
    images = decode(d.teacher, latents)  # the VAE's reconstructions of the renders still show the prompts
    assert all(judge(image, prompt).correct for image, prompt in zip(images, prompts))


def test_generator_timestep_range_and_its_late_phase_are_options_checked_against_the_teacher(
        tmp_path, sd_dir, prompt_file, monkeypatch):
    drawn, ranges = [], []
    original = vsd.sample_generator_timesteps

    def recording(n, gen, device, t_range):
        ranges.append(t_range)
        drawn.append(original(n, gen, device, t_range))
        return drawn[-1]
    monkeypatch.setattr(vsd, "sample_generator_timesteps", recording)
    Distiller(config(tmp_path, sd_dir, prompt_file, "range", generator_t_min=100, generator_t_max=300, steps=3,
                     late_fraction=0.3, late_t_max=150), progress=False).run()
    assert ranges == [(100, 300), (100, 300), (100, 150)]
    assert all(100 <= int(t) <= 300 for ts in drawn[:2] for t in ts) and all(100 <= int(t) <= 150 for t in drawn[2])
    # the late phase is part of the configuration a checkpoint must match
    with pytest.raises(ResumeMismatch, match="late_fraction=0.3 but this run asks for late_fraction=0.0"):
        Distiller(config(tmp_path, sd_dir, prompt_file, "range", generator_t_min=100, generator_t_max=300, steps=4,
                         resume=True), progress=False)
    with pytest.raises(ValueError, match="--generator-t-max 1000 is beyond this teacher's last timestep 999"):
        Distiller(config(tmp_path, sd_dir, prompt_file, "far", generator_t_max=1000), progress=False)
    for bad, message in ((dict(generator_t_min=500, generator_t_max=400), "0 <= min <= max, got 500 and 400"),
                         (dict(late_t_max=400), "--late-t-max needs --late-fraction"),
                         (dict(late_fraction=0.5), "needs --late-t-max"),
                         (dict(late_fraction=1.0, late_t_max=400), "--late-fraction must be 0"),
                         (dict(late_fraction=0.5, late_t_max=990), "--late-t-max must lie between")):
        with pytest.raises(ValueError, match=message):
            config(tmp_path, sd_dir, prompt_file, **bad).resolved("paper").check()
    # the embedded world's defaults carry a late phase; the paper's none
    embedded = DistillConfig.from_options(out=str(tmp_path / "e")).resolved("shapes")
    assert (embedded.timesteps.late_fraction, embedded.timesteps.late_t_max) == (0.375, 400)
    paper = config(tmp_path, sd_dir, prompt_file).resolved("paper")
    assert (paper.timesteps.late_fraction, paper.timesteps.late_t_max) == (0.0, None)


def test_learning_rate_schedule_sets_both_networks_rates_each_step(tmp_path, sd_dir, prompt_file):
    from wadi_core.schedules import lr_factor

    run = Distiller(config(tmp_path, sd_dir, prompt_file, steps=4, lr_fake=2e-2, lr_schedule="cosine", lr_warmup=1),
                    progress=False)
    rates = []
    run.run(on_step=lambda record: rates.append((run.opt_student.param_groups[0]["lr"],
                                                 run.opt_fake.param_groups[0]["lr"])))
    factors = [lr_factor("cosine", step, 4, 1) for step in range(4)]
    assert factors[0] == 1.0 and factors[1] == 1.0 and 0 < factors[3] < factors[2] < 1
    assert rates == [pytest.approx((1e-2 * f, 2e-2 * f)) for f in factors]
    with pytest.raises(ResumeMismatch, match="lr_schedule='cosine'.*lr_schedule='constant'"):
        Distiller(config(tmp_path, sd_dir, prompt_file, steps=5, lr_fake=2e-2, resume=True), progress=False)
    for bad, message in ((dict(lr_schedule="warm"), "--lr-schedule 'warm'"), (dict(lr_warmup=4), "--lr-warmup-steps")):
        with pytest.raises(ValueError, match=message):
            config(tmp_path, sd_dir, prompt_file, **bad).resolved("paper").check()
