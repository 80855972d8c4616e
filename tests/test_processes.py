"""``wadi distill`` in two processes on this CPU: ``accelerate launch --multi_gpu --num_processes 2`` (a gloo group;
``accelerate launch --cpu`` would start one process, docs/multi_gpu.md).

The draws of a step are made for the whole batch of all processes and DDP averages the processes' gradients, so
2 processes x batch 2 train the student that 1 process x batch 4 trains. The two runs add the same numbers in
another order (a mean over 4 against the mean of two means over 2), which moves the last bits; Adam's first steps
grow that in the tiny entries of the adapters' up factors (measured: at most 3.3e-4 of a tensor's largest entry,
median 1.2e-5), so the students are compared to 1e-3 of each tensor's largest entry. A process that trains on its
half alone moves every trained tensor by 0.33 to 7 times its largest entry. Under FSDP
(``accelerate launch --use_fsdp``) each process holds half the weights and trains the same student.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import write_sd_folder
from wadi_cli.cli import main
from wadi_core.distill import DistillConfig, Distiller, ResumeMismatch

PROMPTS = ["a red circle", "a blue square on the left", "a green triangle above a red circle", "a yellow square"]
ROOT = Path(__file__).resolve().parents[1]
OPTIONS = dict(student_rank=4, fake_rank=2, lr_student=1e-2, lr_fake=1e-2, guidance=1.5, sample_every=0,
               report_to="none")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("processes")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return write_sd_folder(root / "sd"), root / "prompts.txt"


def flags(options: dict) -> list[str]:
    out = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def launch(processes: int, teacher, out: Path, use_fsdp: bool = False, tree: Path = ROOT,
           **options) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes N -m wadi_cli distill ...`` (or ``--use_fsdp``), one thread a
    process, with the suite of ``tree`` (benchmarks/fsdp_exits.py launches an earlier commit's)."""
    command, env = launch_command(processes, teacher, out, use_fsdp, tree, **options)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tree)


def launch_command(processes: int, teacher, out: Path, use_fsdp: bool = False, tree: Path = ROOT,
                   **options) -> tuple[list[str], dict]:
    """The command and environment of :func:`launch` (one process: ``python -m wadi_cli distill`` itself)."""
    model, prompts = teacher
    kind = ["--use_fsdp"] if use_fsdp else ["--multi_gpu"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", *kind, "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(29500 + os.getpid() % 1000)] if processes > 1 else [sys.executable]
    command = [*launcher, "-m", "wadi_cli", "distill", "--model", str(model), "--prompts", str(prompts),
               "--out", str(out), "--quiet", *flags({**OPTIONS, **options})]
    return command, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}


def one_process(teacher, out: Path, **options) -> Path:
    model, prompts = teacher
    config = DistillConfig.from_options(out=str(out), model=str(model), prompts=str(prompts), **{**OPTIONS, **options})
    return Distiller(config, progress=False).run()


def assert_close(a: dict, b: dict, tol: float = 1e-3) -> None:
    assert a.keys() == b.keys()
    for key in a:
        scale = max(a[key].abs().max().item(), 1e-12)
        assert (a[key] - b[key]).abs().max().item() <= tol * scale, key


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(teacher, tmp_path_factory):
    """One process x batch 4 over 3 steps, and two processes x batch 2 (the shared base: both adapters on one
    backbone, each DDP wrapper with its own parameters), both with their sample grids (the other runs draw none)."""
    root = tmp_path_factory.mktemp("runs")
    one_process(teacher, root / "one", steps=3, batch_size=4, checkpoint_every=2, sample_every=100)
    two = ok(launch(2, teacher, root / "two", steps=3, batch_size=2, checkpoint_every=2, sample_every=100))
    return root, two


def test_two_processes_train_the_student_of_one_process_with_the_whole_batch(runs):
    root, _ = runs
    one, two = load_file(root / "one" / "student.safetensors"), load_file(root / "two" / "student.safetensors")
    assert_close(one, two)
    assert any(v.abs().max() > 0 for k, v in two.items() if k.endswith("lorad_up"))  # it did train
    # the logged losses are the whole batch's, as one process logs them
    h1 = json.loads((root / "one" / "history.json").read_text())
    h2 = json.loads((root / "two" / "history.json").read_text())
    assert [h["step"] for h in h2] == [1, 2, 3]
    for a, b in zip(h1, h2):
        assert b["loss_fake"] == pytest.approx(a["loss_fake"], rel=1e-3)


def test_only_the_main_process_writes_and_speaks(runs):
    root, two = runs
    names = sorted(str(p.relative_to(root / "two")) for p in (root / "two").rglob("*"))
    assert names == sorted(str(p.relative_to(root / "one")) for p in (root / "one").rglob("*"))
    assert not [n for n in names if n.endswith(".tmp") or ".tmp-" in n]
    assert two.stdout.count("wrote ") == 1, two.stdout  # one "wrote ... student.safetensors" line, not two


def test_a_run_resumes_under_another_process_count_with_the_same_whole_batch(runs, teacher):
    root, _ = runs
    # two processes stop at step 2 (the checkpoint); one process with the whole batch in two micro-batches
    # continues to step 3
    ok(launch(2, teacher, root / "parts", steps=2, batch_size=2, checkpoint_every=2))
    logged = []
    resumed = Distiller(DistillConfig.from_options(
        out=str(root / "parts"), model=str(teacher[0]), prompts=str(teacher[1]), steps=3, batch_size=2, grad_accum=2,
        checkpoint_every=2, resume=True, **OPTIONS), progress=False, log=logged.append).run()
    assert ("resuming a run of 2 process(es) x batch 2 with 1 process(es) x 2 micro-batches x batch 2: the same 4 "
            "prompts a step") in logged
    assert_close(load_file(root / "one" / "student.safetensors"), load_file(resumed))
    # the other way: a one-process checkpoint continued by two processes
    one_process(teacher, root / "back", steps=2, batch_size=4, checkpoint_every=2)
    result = ok(launch(2, teacher, root / "back", steps=3, batch_size=2, checkpoint_every=2, resume=True))
    assert "resuming a run of 1 process(es) x batch 4 with 2 process(es) x batch 2: the same 4 prompts a step" in \
        result.stdout
    assert_close(load_file(root / "one" / "student.safetensors"), load_file(root / "back" / "student.safetensors"))


def test_resuming_with_another_whole_batch_is_refused_naming_the_batch_size_that_keeps_it(runs, teacher):
    root, _ = runs
    before = (root / "two" / "checkpoint" / "state.pt").read_bytes()
    with pytest.raises(ResumeMismatch, match=re.escape(
            "its checkpoint was made by 2 process(es) x batch 2 = 4 prompts a step, but this run has 1 process(es) x "
            "batch 2 = 2; keep 4 prompts a step (--batch-size 4)")):
        one_process(teacher, root / "two", steps=4, batch_size=2, resume=True)
    assert (root / "two" / "checkpoint" / "state.pt").read_bytes() == before  # nothing written


def test_the_comparison_tells_a_process_that_trains_on_its_half_alone(runs, teacher):
    """The tolerance is tight enough to tell: the student of one process's half of the batch (what a process
    gives when the gradients are not averaged) is another student."""
    root, _ = runs
    one_process(teacher, root / "half", steps=3, batch_size=2, checkpoint_every=2)
    with pytest.raises(AssertionError):
        assert_close(load_file(root / "two" / "student.safetensors"), load_file(root / "half" / "student.safetensors"))


def test_two_processes_with_gradient_checkpointing_ema_and_host_optimiser_state_on_the_shared_base(runs, teacher):
    """Checkpointed backwards run their forwards again inside the role, under DDP too; the EMA is the same on
    every process; each process steps its AdamW in host memory (--offload-optimizer) on the gradients averaged over
    the processes and summed over two micro-batches (DDP's exchange held back until the second)."""
    root, _ = runs
    extra = dict(steps=2, checkpoint_every=0, gradient_checkpointing=True, ema=0.5)
    one = one_process(teacher, root / "ckpt-one", batch_size=4, **extra)
    ok(launch(2, teacher, root / "ckpt-two", batch_size=1, grad_accum=2, offload_optimizer=True, **extra))
    assert_close(load_file(one), load_file(root / "ckpt-two" / "student.safetensors"))


# FSDP: the reduce-scatter adds the processes' gradients in another order than DDP's all-reduce; measured against
# one process (2026-12-07): at most 4.4e-4 of a tensor's largest entry (DDP: 2.8e-4, with two micro-batches,
# checkpointing and the optimiser on the host 5.7e-4), so FSDP's students are compared to 2e-3 of it (a process that
# trains on its half alone is off by 0.33 or more)
FSDP_TOLERANCE = 2e-3
SHARDED = re.compile(r"FSDP: the weights are sharded over 2 processes; this one holds ([\d,]+) of ([\d,]+) ")


def held_share(result: subprocess.CompletedProcess) -> float:
    held, total = (int(n.replace(",", "")) for n in SHARDED.search(result.stdout).groups())
    return held / total


@pytest.fixture(scope="module")
def fsdp(runs, teacher):
    """``accelerate launch --use_fsdp``: 2 processes x batch 2 over 3 steps, each holding half the shared backbone
    (torch's FSDP2 over gloo)."""
    root, _ = runs
    return ok(launch(2, teacher, root / "fsdp", steps=3, batch_size=2, checkpoint_every=2, use_fsdp=True,
                     sample_every=100))


def test_fsdp_shards_the_shared_base_and_trains_the_student_of_one_process(runs, fsdp):
    root, _ = runs
    assert held_share(fsdp) == pytest.approx(0.5, abs=0.01)  # each process holds half of the weights
    assert_close(load_file(root / "one" / "student.safetensors"), load_file(root / "fsdp" / "student.safetensors"),
                 FSDP_TOLERANCE)
    assert sorted(p.name for p in (root / "fsdp").rglob("*")) == sorted(p.name for p in (root / "one").rglob("*"))
    assert fsdp.stdout.count("wrote ") == 1, fsdp.stdout
    h1 = json.loads((root / "one" / "history.json").read_text())
    h2 = json.loads((root / "fsdp" / "history.json").read_text())
    for a, b in zip(h1, h2, strict=True):
        assert b["loss_fake"] == pytest.approx(a["loss_fake"], rel=1e-3)


def test_an_fsdp_checkpoint_holds_whole_tensors_and_resumes_in_one_process_and_back(runs, fsdp, teacher):
    root, _ = runs
    # the FSDP run's last checkpoint (step 3), continued to step 4 by one process with the whole batch
    shutil.copytree(root / "fsdp", root / "fsdp-parts")
    resumed = one_process(teacher, root / "fsdp-parts", steps=4, batch_size=4, checkpoint_every=2, resume=True)
    whole = one_process(teacher, root / "one-4", steps=4, batch_size=4, checkpoint_every=2)
    assert_close(load_file(whole), load_file(resumed), FSDP_TOLERANCE)
    # a one-process checkpoint (step 2) continued by two FSDP processes of two micro-batches each (the shards'
    # gradients exchanged after the second)
    one_process(teacher, root / "fsdp-back", steps=2, batch_size=4, checkpoint_every=2)
    result = ok(launch(2, teacher, root / "fsdp-back", steps=3, batch_size=1, grad_accum=2, checkpoint_every=2,
                       resume=True, use_fsdp=True))
    assert "resumed" in result.stdout and held_share(result) == pytest.approx(0.5, abs=0.01)
    assert_close(load_file(root / "one" / "student.safetensors"),
                 load_file(root / "fsdp-back" / "student.safetensors"), FSDP_TOLERANCE)


def test_fsdp_with_separate_copies_gradient_checkpointing_ema_and_accumulation(runs, teacher):
    """Three sharded networks of their own; checkpointed backwards gather their shards again; the EMA averages each
    process's shards and the student file holds its whole tensors."""
    root, _ = runs
    extra = dict(steps=2, checkpoint_every=0, separate_copies=True, gradient_checkpointing=True, ema=0.5,
                 grad_accum=2)
    one = one_process(teacher, root / "copies-one", batch_size=2, **extra)
    result = ok(launch(2, teacher, root / "copies-fsdp", batch_size=1, use_fsdp=True, **extra))
    assert held_share(result) == pytest.approx(0.5, abs=0.01)
    fsdp = load_file(root / "copies-fsdp" / "student.safetensors")
    assert any(v.abs().max() > 0 for k, v in fsdp.items() if k.endswith("lorad_up"))  # it did train
    assert_close(load_file(one), fsdp, FSDP_TOLERANCE)


@pytest.mark.parametrize("words, message", [
    (["--offload-optimizer"], ("--offload-optimizer does not run under FSDP, which already divides the optimiser "
                               "state among the processes; launch with --multi_gpu")),
], ids=["offload-optimizer"])
def test_what_fsdp_does_not_run_is_refused(teacher, tmp_path, monkeypatch, capsys, words, message):
    """Refused before anything starts (here in this process, as each launched process would be)."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    model, prompts = teacher
    assert main(["distill", "--model", str(model), "--prompts", str(prompts), "--out", str(tmp_path / "run"),
                 "--steps", "1", *words]) == 2
    assert f"wadi distill: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("words, status, stream, text", [
    (["presets"], 0, "stdout", "unet-student  (paper rank 256)"),
    (["distill", "--model", "no-such-teacher", "--out", "run", "--steps", "1"], 2, "stderr",
     "wadi distill: error: the teacher no-such-teacher does not exist"),
])
def test_a_launched_process_ends_with_its_status_and_all_its_output(tmp_path, words, status, stream, text):
    """One of several processes (``WORLD_SIZE`` > 1, as accelerate and torchrun set it) leaves without the
    interpreter's teardown (``wadi_cli/__main__.py``); what it printed into a pipe still arrives, and its status is
    the command's."""
    env = {**os.environ, "WORLD_SIZE": "2", "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONUNBUFFERED", None)  # a pipe's output waits in Python's buffer until flushed
    result = subprocess.run([sys.executable, "-m", "wadi_cli", *words], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == status, result.stderr
    assert text in getattr(result, stream)
    assert not (tmp_path / "run").exists()


def test_fsdp_units_are_the_parts_of_a_unets_blocks_and_a_dits_transformer_blocks():
    """Small units keep what a process gathers at once small (one of SD1.5's up blocks is 30% of its weights):
    each resnet, transformer and resampler of a UNet's down, mid and up blocks, then the blocks for what is left."""
    from diffusers import UNet2DConditionModel

    from conftest import tiny_sdxl_unet_config
    from test_dit import tiny_pixart
    from wadi_core.distill import sharding

    unet = UNet2DConditionModel(**tiny_sdxl_unet_config())
    units = sharding.units(unet)
    blocks = [*unet.down_blocks, *unet.up_blocks, unet.mid_block]
    parts = [m for b in blocks for name in ("resnets", "attentions", "downsamplers", "upsamplers")
             for m in getattr(b, name, None) or ()]
    assert {id(m) for m in units} == {id(m) for m in parts + blocks}
    assert all(units.index(part) < units.index(block) for block in blocks for part in block.modules()
               if part is not block and part in units)  # inner units first
    largest = max(sum(p.numel() for p in m.parameters()) for m in parts)
    assert largest < 0.2 * sum(p.numel() for p in unet.parameters())
    dit = tiny_pixart()
    assert [id(m) for m in sharding.units(dit)] == [id(m) for m in dit.transformer_blocks]


def test_two_processes_train_with_the_gan_term_and_regression_pairs_under_ddp_and_fsdp(teacher, tmp_path):
    """DDP refuses a network with weights that no loss reaches: the discriminator head holds only the classifier
    it uses (a UNet's patch classifier). Under FSDP the backbones are sharded (with gradient checkpointing the fake
    model is a copy of its own, sharded too) and the small head stays whole in every process, its gradients averaged
    like DDP's; every process draws DMD's regression pairs with the sharded teacher. Both train the same student and
    head."""
    import torch

    from test_distill import write_real_images

    real = write_real_images(tmp_path / "real")
    options = dict(steps=3, batch_size=2, checkpoint_every=2, gan_weight=0.5, gan_disc_weight=0.1,
                   gan_images=str(real), regression_pairs=3)
    ok(launch(2, teacher, tmp_path / "ddp", **options))
    result = ok(launch(2, teacher, tmp_path / "fsdp", use_fsdp=True, gradient_checkpointing=True, **options))
    assert held_share(result) == pytest.approx(0.5, abs=0.01)
    ddp, fsdp = (load_file(tmp_path / name / "student.safetensors") for name in ("ddp", "fsdp"))
    assert any(v.abs().max() > 0 for k, v in fsdp.items() if k.endswith("lorad_up"))
    assert_close(ddp, fsdp, FSDP_TOLERANCE)
    heads = [torch.load(tmp_path / name / "checkpoint" / "state.pt")["gan_head"] for name in ("ddp", "fsdp")]
    assert_close(*heads, FSDP_TOLERANCE)
    for name in ("ddp", "fsdp"):
        history = json.loads((tmp_path / name / "history.json").read_text())
        assert all(h["loss_gan"] > 0 and h["loss_discriminator"] > 0 for h in history)
    # each run continued to step 4 under the other (FSDP now on the shared backbone): the head's state and its
    # optimiser's move between a sharded run and a DDP one
    for name, other in (("ddp", dict(use_fsdp=True)), ("fsdp", {})):
        shutil.copytree(tmp_path / name, tmp_path / f"{name}-4")
        ok(launch(2, teacher, tmp_path / f"{name}-4", **{**options, "steps": 4, "resume": True, **other}))
    assert_close(*(load_file(tmp_path / f"{name}-4" / "student.safetensors") for name in ("ddp", "fsdp")),
                 FSDP_TOLERANCE)



def test_torchrun_starts_the_same_run(runs, teacher):
    """``torchrun --nproc_per_node 2 -m wadi_cli distill`` (torch's launcher, one thread a process by its default),
    with FSDP asked for as accelerate's launcher asks (``ACCELERATE_USE_FSDP=true``): the student of one process
    with the whole batch. (Without it, DDP: the same processes; measured 2.8e-4.)"""
    root, _ = runs
    model, prompts = teacher
    out = root / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_FSDP": "true"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(30500 + os.getpid() % 1000), "-m", "wadi_cli", "distill", "--model", str(model),
               "--prompts", str(prompts), "--out", str(out), "--quiet",
               *flags({**OPTIONS, "steps": 3, "batch_size": 2, "checkpoint_every": 0})]
    result = ok(subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT))
    assert held_share(result) == pytest.approx(0.5, abs=0.01)
    assert_close(load_file(root / "one" / "student.safetensors"), load_file(out / "student.safetensors"),
                 FSDP_TOLERANCE)


@pytest.mark.parametrize("family, use_fsdp", [("pixart", True), ("sdxl", False)], ids=["pixart-fsdp", "sdxl-ddp"])
def test_two_processes_distil_a_dit_and_an_sdxl_teacher(family, use_fsdp, tmp_path):
    """The other backbones in two processes: a PixArt-style DiT under FSDP (its transformer blocks are the units, a
    T5 encodes the prompts) and SDXL under DDP (its UNet takes each row's pooled text and size ids beside the
    embeddings; its FSDP units are SD1.x's): 2 processes x batch 2 train the student of one process with batch 4,
    and one process that trained on its half alone does not. (Measured with both kinds on both: DiT 5.9e-4 to 3.9e-3
    over three tiny teachers, DDP and FSDP equal to 1e-6; SDXL 2.7e-4 DDP, 5.7e-4 FSDP.) The fake model's guidance
    is 1 (DMD's): with the teacher's, fake and teacher start equal on these random tiny teachers, the student's
    gradient is near zero for its first steps (1e-13 on SDXL) and Adam turns the last bits of its sums into steps
    (1.05e-2 of a tensor's largest entry under FSDP). The DiT's batch of 4 adds in another order than its batches of
    2, hence the wider tolerance; one that trained on its half alone is off by up to 1.8 times a tensor's largest
    entry."""
    import torch

    from conftest import write_sdxl_folder
    from test_dit import tiny_pixart_folder

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / family).mkdir()
    write = tiny_pixart_folder if family == "pixart" else write_sdxl_folder
    torch.manual_seed(0)  # (the tiny T5's weights come from the global generator)
    teacher = (write(tmp_path / family), tmp_path / "prompts.txt")
    tolerance = 1e-2
    options = dict(steps=3, checkpoint_every=0, fake_guidance=1.0)
    one = load_file(one_process(teacher, tmp_path / "one", batch_size=4, **options))
    assert any(v.abs().max() > 0 for k, v in one.items() if k.endswith("lorad_up"))  # it did train
    result = ok(launch(2, teacher, tmp_path / "two", use_fsdp=use_fsdp, batch_size=2, **options))
    assert ("FSDP: the weights are sharded" in result.stdout) == use_fsdp
    assert_close(one, load_file(tmp_path / "two" / "student.safetensors"), tolerance)
    half = load_file(one_process(teacher, tmp_path / "half", batch_size=2, **options))
    with pytest.raises(AssertionError):
        assert_close(one, half, tolerance)


def wait_for_first_step(out: Path, process: subprocess.Popen) -> None:
    """Until the run has finished a step (``--student-every 1`` keeps each step's student): it is then training,
    inside its stop on signals."""
    deadline = time.monotonic() + 300
    while not (out / "students" / "student-step000001.safetensors").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)


def test_sigterm_stops_a_run_after_its_step_with_a_checkpoint_that_resumes_exactly(teacher, tmp_path):
    """A scheduler's SIGTERM (Ctrl-C alike) lets the step in progress finish, writes a checkpoint there and ends
    with status 143 (128 + SIGTERM, as a shell reports it); --resume then finishes the student of an uninterrupted
    run, to the bit."""
    import torch

    out = tmp_path / "run"
    command, env = launch_command(1, teacher, out, steps=1000, batch_size=2, checkpoint_every=0, student_every=1)
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_first_step(out, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    step = torch.load(out / "checkpoint" / "state.pt")["step"]
    assert 1 <= step < 1000
    assert "SIGTERM: stopping after this step with a checkpoint" in stdout
    assert f"stopped at step {step}; continue with --resume" in stdout
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    resumed = one_process(teacher, out, steps=step + 1, batch_size=2, checkpoint_every=0, resume=True)
    whole = one_process(teacher, tmp_path / "whole", steps=step + 1, batch_size=2, checkpoint_every=0)
    a, b = load_file(resumed), load_file(whole)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_signal_to_one_process_stops_every_process_after_the_same_step(runs, teacher):
    """Only the second of two processes is told (a launcher passes a signal on to each in turn, and they may be in
    different steps when it does): both stop after the same step, the main one writes the checkpoint, and one
    process with the whole batch continues it to the student of one process's uninterrupted run."""
    import psutil
    import torch

    root, _ = runs
    out = root / "signalled"
    command, env = launch_command(2, teacher, out, steps=1000, batch_size=2, checkpoint_every=0, student_every=1)
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_first_step(out, process)
        second = next(p for p in psutil.Process(process.pid).children(recursive=True)
                      if p.environ().get("RANK") == "1")
        second.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)  # (a process left alone in a collective would wait here)
    finally:
        process.kill()
    step = torch.load(out / "checkpoint" / "state.pt")["step"]
    assert 1 <= step < 1000 and f"stopped at step {step}; continue with --resume" in stdout, stderr[-3000:]
    resumed = one_process(teacher, out, steps=step + 1, batch_size=4, checkpoint_every=0, resume=True)
    whole = one_process(teacher, root / "whole-after-signal", steps=step + 1, batch_size=4, checkpoint_every=0)
    assert_close(load_file(whole), load_file(resumed))



def test_ctrl_c_to_the_launcher_stops_its_processes_with_a_checkpoint(teacher, tmp_path):
    """Ctrl-C reaches ``accelerate launch`` (here alone; a terminal signals the processes too), which passes it on
    to each process and then reports a failure: the processes finish their step first and the checkpoint is
    written (docs/troubleshooting.md)."""
    import torch

    out = tmp_path / "run"
    command, env = launch_command(2, teacher, out, steps=1000, batch_size=2, checkpoint_every=0, student_every=1)
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_first_step(out, process)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    step = torch.load(out / "checkpoint" / "state.pt")["step"]
    assert "SIGINT: stopping after this step with a checkpoint" in stdout, stderr[-3000:]
    assert f"stopped at step {step}; continue with --resume" in stdout

def test_a_second_ctrl_c_stops_at_once_in_one_process():
    from wadi_core.distill.stopping import StopOnSignals

    said = []
    before = signal.getsignal(signal.SIGINT)
    with StopOnSignals(said.append) as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop() and stop.status == 130
        assert said == ["SIGINT: stopping after this step with a checkpoint (Ctrl-C again stops at once, without one)"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


BLIND = '''import os, sys
from pathlib import Path
if os.environ.get("RANK") == "1":  # another node's disk, where the run folder is not
    is_file = Path.is_file
    Path.is_file = lambda path: path.name != "state.pt" and is_file(path)
from wadi_cli.cli import main
status = main(sys.argv[1:])
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
'''


def test_a_resume_that_one_process_cannot_read_stops_every_process_with_one_message(runs, teacher, tmp_path):
    """Every process reads the checkpoint when a run resumes; on two nodes without shared storage the second node's
    processes do not find it (here the second of two processes is made blind to it). Every process stops with the
    same message, the main one too, instead of waiting for the other in a collective."""
    root, _ = runs
    shutil.copytree(root / "two", tmp_path / "run")
    (tmp_path / "blind.py").write_text(BLIND)
    command, env = launch_command(2, teacher, tmp_path / "run", steps=4, batch_size=2, checkpoint_every=2,
                                  resume=True)
    at = command.index("wadi_cli")
    command[at - 1:at + 1] = [str(tmp_path / "blind.py")]  # (instead of -m wadi_cli)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode != 0
    assert result.stderr.count("wadi distill: error: cannot resume: ") == 2, result.stderr[-3000:]
    assert "put --out on storage that every node sees at the same path" in result.stderr
