"""The battery of bad inputs: every case must end in one clear line, exit status 2 and nothing written.

Each row of ``CASES`` is one bad input (an id, the command line, a fragment of the message it must give).
docs/reliability.md lists the same ids; a test keeps the two in step. The faults that used to give wrong
results or lose work (divergence, --overwrite, two writers, a checkpoint swap cut in half, leftovers) are
tested one by one below the table.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import randomize, tiny_unet, write_sd_folder
from wadi_cli.cli import main
from wadi_core import fileio, lorad

ROOT = Path(__file__).resolve().parents[1]


def save_variant(source: Path, path: Path, change=None, metadata=None) -> Path:
    """A copy of the adapter ``source`` with its tensors changed by ``change`` and its metadata updated."""
    from safetensors import safe_open
    with safe_open(str(source), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(source))
    if change:
        tensors = {k: change(v) for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={**meta, **(metadata or {})})
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The inputs the cases point at, built once: a tiny SD folder, a LoRaD adapter for it and broken copies."""
    root = tmp_path_factory.mktemp("bad-inputs")
    sd = write_sd_folder(root / "sd")
    unet = tiny_unet()
    lorad.attach(unet, rank=4, preset="unet-student")
    randomize(lorad.trainable_parameters(unet), seed=1, std=0.3)
    adapter = lorad.save_adapter(unet, root / "a.safetensors", preset="unet-student")
    w = {"root": root, "sd": sd, "adapter": adapter}
    w["nan_adapter"] = save_variant(adapter, root / "nan.safetensors", lambda t: t.clone().fill_(float("nan")))
    w["overflow"] = save_variant(adapter, root / "overflow.safetensors", lambda t: t * 1e30)
    w["int_adapter"] = save_variant(adapter, root / "int.safetensors", lambda t: (t * 10).to(torch.int32))
    w["bool_adapter"] = save_variant(adapter, root / "bool.safetensors", lambda t: t > 0)
    w["rank_text"] = save_variant(adapter, root / "rank-text.safetensors", metadata={"wadi.rank": "abc"})
    w["rank_wrong"] = save_variant(adapter, root / "rank-wrong.safetensors", metadata={"wadi.rank": "8"})
    w["layers_wrong"] = save_variant(adapter, root / "layers-wrong.safetensors", metadata={"wadi.layers": "3"})
    w["prefix_wrong"] = save_variant(adapter, root / "prefix-wrong.safetensors",
                                     metadata={"wadi.prefix": "lora_transformer"})
    w["kind_wrong"] = save_variant(adapter, root / "kind-wrong.safetensors", metadata={"wadi.adapter_type": "lora"})
    nan_sd = root / "nan-sd"
    shutil.copytree(sd, nan_sd)
    weights = nan_sd / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["conv_in.weight"][0, 0, 0, 0] = float("nan")
    state["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"][0, 0] = float("nan")
    save_file(state, str(weights))
    w["nan_sd"] = nan_sd
    for name, data in (("binary", b"a red circle\x00\x01\x02"), ("latin1", "a caf\xe9 circle\n".encode("latin-1")),
                       ("not_an_image", b"this is not a PNG")):
        (root / name).write_bytes(data)
        w[name] = root / name
    (root / "prompt-folder").mkdir()
    w["prompt_folder"] = root / "prompt-folder"
    stateless = root / "stateless-run" / "checkpoint"
    stateless.mkdir(parents=True)
    torch.save({"step": 1}, stateless / "state.pt")
    w["stateless_run"] = stateless.parent
    (root / "prompts.txt").write_text("a red circle\n")
    w["prompts"] = root / "prompts.txt"
    (root / "empty-run").mkdir()
    w["empty_run"] = root / "empty-run"
    return w


# (id, command line, fragment of the one-line message). {out} is a fresh path that must stay unwritten.
CASES = [
    # adapter strengths and values
    ("merge-strength-nan", "merge --base {sd} --adapter {adapter}:nan --out {out}.safetensors", "finite number"),
    ("merge-strength-inf", "merge --base {sd} --adapter {adapter}:inf --out {out}.safetensors", "finite number"),
    ("merge-strength-not-a-number", "merge --base {sd} --adapter {adapter}:abc --out {out}.safetensors",
     "must be a number"),
    ("merge-strength-overflows", "merge --base {sd} --adapter {adapter}:1e300 --out {out}.safetensors", "overflow"),
    ("merge-factors-overflow", "merge --base {sd} --adapter {overflow} --out {out}.safetensors", "overflow"),
    ("merge-nan-factors", "merge --base {sd} --adapter {nan_adapter} --out {out}.safetensors", "NaN or Inf"),
    ("merge-integer-tensors", "merge --base {sd} --adapter {int_adapter} --out {out}.safetensors", "holds int32"),
    ("merge-bool-tensors", "merge --base {sd} --adapter {bool_adapter} --out {out}.safetensors", "holds bool"),
    ("metadata-rank-not-a-number", "merge --base {sd} --adapter {rank_text} --out {out}.safetensors",
     "wadi.rank='abc' is not a whole number"),
    ("metadata-rank-disagrees", "merge --base {sd} --adapter {rank_wrong} --out {out}.safetensors",
     "wadi.rank=8 but its tensors have rank 4"),
    ("metadata-layers-disagree", "merge --base {sd} --adapter {layers_wrong} --out {out}.safetensors",
     "wadi.layers=3"),
    ("metadata-prefix-disagrees", "merge --base {sd} --adapter {prefix_wrong} --out {out}.safetensors",
     "wadi.prefix='lora_transformer'"),
    ("metadata-kind-disagrees", "generate --model {sd} --student {kind_wrong} --prompt x --out {out} --quiet",
     "wadi.adapter_type='lora'"),
    ("inspect-overflowing-adapter", "inspect {overflow}", "overflow"),
    ("generate-strength-nan", "generate --model {sd} --student {adapter}:nan --prompt x --out {out} --quiet",
     "finite number"),
    ("generate-factors-overflow", "generate --model {sd} --student {overflow} --prompt x --out {out} --quiet",
     "overflow"),
    ("generate-nan-model", "generate --model {nan_sd} --one-step --prompt x --out {out} --quiet",
     "produced NaN or Inf values"),
    ("export-lora-nan-base", "export-lora --base {nan_sd} --adapter {adapter} --out {out}.safetensors --quiet",
     "holds NaN or Inf values"),
    # numbers
    ("generate-guidance-nan", "generate --prompt x --guidance nan --out {out}", "finite number"),
    ("generate-guidance-negative", "generate --prompt x --guidance -1 --out {out}", "0 or more"),
    ("generate-batch-size-zero", "generate --prompt x --batch-size 0 --out {out}", "1 or more"),
    ("generate-seed-negative", "generate --prompt x --seed -1 --out {out}", "from 0 to"),
    ("generate-steps-zero", "generate --prompt x --steps 0 --out {out}", "1 or more"),
    ("eval-no-prompts", "eval --num-prompts 0", "1 or more"),
    ("demo-no-prompts", "demo --num-prompts 0 --out {out}", "1 or more"),
    ("distill-guidance-nan", "distill --guidance nan --out {out}", "finite number"),
    ("distill-guidance-below-one", "distill --guidance 0.5 --out {out}", "1 (no guidance) or more"),
    ("distill-lr-inf", "distill --lr-student inf --out {out}", "finite number"),
    ("distill-lr-huge", "distill --student-kind full --lr-student 1e30 --out {out}", "at most 1"),
    ("distill-batch-size-zero", "distill --batch-size 0 --out {out}", "1 or more"),
    ("distill-ema-text", "distill --ema fast --out {out}", "is not a number"),
    ("dreambooth-steps-zero", "dreambooth --steps 0 --out {out}", "1 or more"),
    ("dreambooth-eval-one-image", "dreambooth-eval --count 1 --out {out}", "2 or more"),
    ("export-lora-rank-huge", "export-lora --base {sd} --adapter {adapter} --rank 1000000 --out {out}.safetensors",
     "above the full rank"),
    ("export-lora-rank-zero", "export-lora --base {sd} --adapter {adapter} --rank 0 --out {out}.safetensors",
     "1 or more"),
    ("highres-strength-zero", "highres --student {adapter} --prompt x --strength 0 --out {out}", "more than 0"),
    ("reversion-lr-nan", "reversion --lr nan --out {out}", "finite number"),
    ("controlnet-scale-negative", "controlnet --eval 1 --scale -1 --out {out}", "0 or more"),
    # a device this machine lacks (no CUDA here; on a GPU machine not an eighth GPU), refused before any work
    ("highres-device-missing", "highres --student {adapter} --prompt x --device cuda:7 --out {out}",
     "--device cuda:7: "),
    ("controlnet-device-missing", "controlnet --eval 1 --device cuda:7 --out {out}", "--device cuda:7: "),
    ("reversion-device-missing", "reversion --steps 1 --device cuda:7 --out {out}", "--device cuda:7: "),
    ("dreambooth-device-missing", "dreambooth --steps 1 --device cuda:7 --out {out}", "--device cuda:7: "),
    # files that are not what they should be
    ("prompts-binary", "generate --prompts {binary} --out {out}", "binary file"),
    ("prompts-latin1", "generate --prompts {latin1} --out {out}", "not UTF-8 text (line 1"),
    ("prompts-folder", "generate --prompts {prompt_folder} --out {out}", "is a folder"),
    ("control-not-an-image", "controlnet --prompt x --control {not_an_image} --out {out}", "not a readable image"),
    ("control-missing", "controlnet --prompt x --control {root}/nope.png --out {out}", "does not exist"),
    # outputs that cannot be written
    ("out-is-the-base", "merge --model {sd} --adapter {adapter} --out {sd} --overwrite", "is the input --model"),
    ("out-is-an-adapter", "export-lora --base {sd} --adapter {adapter} --out {adapter} --overwrite",
     "is the input --adapter"),
    ("out-is-the-model", "generate --model {sd} --prompt x --out {sd} --overwrite", "is the input --model"),
    ("distill-out-is-the-teacher", "distill --model {sd} --prompts {prompts} --out {sd} --overwrite",
     "is the input --model"),
    ("distill-export-merged-is-the-teacher",
     "distill --model {sd} --prompts {prompts} --out {out} --export-merged {sd} --overwrite",
     "is the input --model"),
    ("distill-export-merged-folder-missing",
     "distill --model {sd} --prompts {prompts} --out {out} --export-merged {root}/no/merged",
     "does not exist; create it first"),
    ("out-inside-a-file", "merge --base {sd} --adapter {adapter} --out {adapter}/m.safetensors",
     "is a file, not a folder"),
    ("out-folder-missing", "generate --prompt x --out {root}/no/such/folder", "does not exist; create it first"),
    ("out-folder-unwritable", "generate --prompt x --out /sys/wadi-test-output", "cannot write in /sys"),
    # distillation set-up
    ("distill-teacher-missing", "distill --model {root}/no-teacher --out {out}", "the teacher"),
    ("distill-prompts-needed", "distill --model {sd} --out {out}", "a prompt file is needed"),
    ("distill-resume-nothing", "distill --resume --out {empty_run}", "nothing to resume"),
    ("distill-checkpoint-without-config", "distill --resume --out {stateless_run}", "has no 'config'"),
    ("distill-out-is-a-file", "distill --out {adapter}", "is a file"),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's refusals
        code = exit_.code
    return code, capsys.readouterr().err


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, world, tmp_path, capsys):
    _, command, fragment = case
    values = {k: str(v) for k, v in world.items()} | {"out": str(tmp_path / "out")}
    argv = command.format(**values).split()
    before = listing(world["root"])
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.match(r"wadi [a-z-]+: error: ", lines[0]), err
    assert fragment in lines[0], lines[0]
    assert listing(tmp_path) == set(), "the refused command wrote something"
    assert listing(world["root"]) == before, "the refused command changed its inputs"


def test_the_documented_battery_is_the_tested_one():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", doc, flags=re.M))
    assert listed == {c[0] for c in CASES}


def test_library_calls_refuse_non_finite_numbers(world):
    from wadi_core.distill import DistillConfig
    from wadi_core import sampling
    unet = tiny_unet()
    with pytest.raises(lorad.AdapterError, match="finite number"):
        lorad.load_adapter(unet, world["adapter"], strength=float("nan"))
    assert not lorad.adapter_names(unet)  # refused before anything was attached
    with pytest.raises(ValueError, match="finite number"):
        lorad.set_strength(unet, float("inf"))
    with pytest.raises(ValueError, match="guidance"):
        sampling.check_sampling_settings(guidance=float("nan"))
    for field, value in (("guidance", float("nan")), ("lr_student", float("inf")), ("lr_student", 1e30),
                         ("ema", float("nan"))):
        config = DistillConfig.from_options(out="x", **{field: value}).resolved("shapes")
        with pytest.raises(ValueError, match=field.replace("_", "-")):
            config.check()


# ----- the faults that used to give wrong results or lose work

def distill_config(tmp_path, world, name="run", **kw):
    from wadi_core.distill import DistillConfig
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    base = dict(out=str(tmp_path / name), model=str(world["sd"]), prompts=str(prompts), steps=4, batch_size=2,
                student_rank=4, fake_rank=2, lr_student=1e-2, lr_fake=1e-2, guidance=1.5, checkpoint_every=1,
                sample_every=0, report_to="none")
    return DistillConfig.from_options(**{**base, **kw})


def test_a_diverging_run_keeps_a_good_checkpoint_and_its_advice_resumes(tmp_path, world, monkeypatch):
    """The optimiser's step at step 3 makes the weights infinite although that step's loss was finite: the
    checkpoint must stay the one of step 2, and the advice printed must be a command that is accepted."""
    from wadi_core.distill import Distiller, Diverged
    run = Distiller(distill_config(tmp_path, world, max_bad_steps=2), progress=False)
    step = run.opt_student.step

    def poisoned_step(*args, **kwargs):
        result = step(*args, **kwargs)
        if run.step >= 2:
            with torch.no_grad():
                for p in run.student_params:
                    p.fill_(float("inf"))
        return result
    run.opt_student.step = poisoned_step
    with pytest.raises(Diverged) as raised:
        run.run()
    message = str(raised.value)
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in state["student"].values())
    assert "step 2" in message and "--resume --lr-student 0.0025 --lr-fake 0.0025" in message
    resumed = Distiller(distill_config(tmp_path, world, resume=True, lr_student=2.5e-3, lr_fake=2.5e-3),
                        progress=False)
    assert resumed.step == 2
    path = resumed.run()
    assert path.is_file() and lorad.read_adapter(path).layers  # a finite, readable student


def test_a_run_whose_last_step_breaks_the_weights_writes_no_student(tmp_path, world):
    from wadi_core.distill import Distiller, Diverged
    run = Distiller(distill_config(tmp_path, world, steps=1, checkpoint_every=0), progress=False)
    step = run.opt_student.step

    def poisoned_step(*args, **kwargs):
        result = step(*args, **kwargs)
        with torch.no_grad():
            run.student_params[0].fill_(float("nan"))
        return result
    run.opt_student.step = poisoned_step
    with pytest.raises(Diverged, match="no student was written.*No good checkpoint"):
        run.run()
    assert not (tmp_path / "run" / "student.safetensors").exists()
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_overwrite_clears_the_old_run_so_it_cannot_be_resumed(tmp_path, world):
    from wadi_core.distill import Distiller
    Distiller(distill_config(tmp_path, world, steps=2), progress=False).run()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    again = Distiller(distill_config(tmp_path, world, steps=2, seed=1, overwrite=True), progress=False)
    again.close()  # killed before its first checkpoint
    assert not (tmp_path / "run" / "checkpoint").exists() and not (tmp_path / "run" / "student.safetensors").exists()
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # not a file of the run: kept
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Distiller(distill_config(tmp_path, world, steps=2, seed=1, resume=True), progress=False)


HOLDER = textwrap.dedent("""
    import sys
    from wadi_core import fileio
    with fileio.output_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
""")


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process writing ``path``: it holds the output's lock until its stdin is closed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0


def test_a_second_writer_of_one_output_is_refused(tmp_path, world, capsys):
    out = tmp_path / "merged.safetensors"
    argv = ["merge", "--base", str(world["sd"]), "--adapter", str(world["adapter"]), "--out", str(out), "--quiet"]
    holder = hold_lock(out)
    try:
        code, err = run_cli(argv, capsys)
        assert code == 2 and f"is being written by another wadi run (process {holder.pid})" in err
        assert not out.exists()
    finally:
        release(holder)
    assert run_cli(argv, capsys)[0] == 0
    finished = out.read_bytes()
    code, err = run_cli(argv, capsys)  # the first writer has finished: the usual refusal
    assert code == 2 and "already exists" in err and out.read_bytes() == finished
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.safetensors"]  # no lock or temporary left


def test_a_killed_writers_lock_does_not_block_the_next_one(tmp_path):
    out = tmp_path / "out.safetensors"
    holder = hold_lock(out)
    holder.kill()  # kill -9: the lock file stays, its lock goes with the process
    holder.wait(timeout=60)
    assert (tmp_path / ".out.safetensors.lock").exists()
    with fileio.claim(out):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_live_run_cannot_be_resumed_by_a_second_process(tmp_path, world):
    from wadi_core.distill import Distiller
    Distiller(distill_config(tmp_path, world, steps=1), progress=False).run()
    holder = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(fileio.OutputBusyError, match="another wadi run"):
            Distiller(distill_config(tmp_path, world, steps=2, resume=True), progress=False)
    finally:
        release(holder)
    assert Distiller(distill_config(tmp_path, world, steps=2, resume=True), progress=False).run().is_file()


def test_two_threads_of_one_process_cannot_write_one_output(tmp_path):
    """A web UI serves several requests in one process: the lock holds between its threads too."""
    out = tmp_path / "out.png"
    inside, leave, seen = threading.Event(), threading.Event(), []

    def first():
        with fileio.claim(out):
            inside.set()
            leave.wait(30)
    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(30)
    try:
        with pytest.raises(fileio.OutputBusyError):
            with fileio.claim(out):
                seen.append("entered")
        with fileio.claim(tmp_path / "other.png"):  # another output is free
            seen.append("other")
    finally:
        leave.set()
        thread.join()
    assert seen == ["other"]
    with fileio.claim(out), fileio.claim(out):  # and one thread may nest its own claims
        pass


def test_a_checkpoint_swap_cut_in_half_is_finished_by_the_next_run(tmp_path, world):
    from wadi_core.distill import Distiller
    first = Distiller(distill_config(tmp_path, world, steps=4, checkpoint_every=1), progress=False)
    first.run(should_stop=lambda: first.step == 2)
    folder = tmp_path / "run"
    # killed between the swap's two renames: the complete checkpoint is aside, none in place
    os.replace(folder / "checkpoint", folder / ".checkpoint.old")
    resumed = Distiller(distill_config(tmp_path, world, steps=4, resume=True), progress=False)
    assert resumed.step == 2 and not (folder / ".checkpoint.old").exists()
    resumed.close()
    # killed after them, before the old one was removed: the next checkpoint must not fail on it
    shutil.copytree(folder / "checkpoint", folder / ".checkpoint.old")
    again = Distiller(distill_config(tmp_path, world, steps=4, resume=True), progress=False)
    assert again.run().is_file()
    assert not (folder / ".checkpoint.old").exists()


def test_leftovers_of_killed_writers_are_removed_by_the_next_one(tmp_path, world, capsys):
    from wadi_core.distill import Distiller
    Distiller(distill_config(tmp_path, world, steps=1), progress=False).run()
    folder = tmp_path / "run"
    (folder / ".checkpoint.abcd1234.tmp").mkdir()
    (folder / ".checkpoint.abcd1234.tmp" / "state.pt").write_bytes(b"half")
    (folder / ".student.safetensors.k2j4h6g8.tmp").write_bytes(b"half")
    Distiller(distill_config(tmp_path, world, steps=2, resume=True), progress=False).run()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    out = tmp_path / "merged.safetensors"
    (tmp_path / ".merged.safetensors.q1w2e3r4.tmp").write_bytes(b"half")
    (tmp_path / ".merged.safetensors.other.tmp").write_bytes(b"not ours")  # not a name our temporaries take
    assert run_cli(["merge", "--base", str(world["sd"]), "--adapter", str(world["adapter"]), "--out", str(out),
                    "--quiet"], capsys)[0] == 0
    assert not (tmp_path / ".merged.safetensors.q1w2e3r4.tmp").exists()
    assert (tmp_path / ".merged.safetensors.other.tmp").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, world, capsys, monkeypatch):
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    code, err = run_cli(["merge", "--base", str(world["sd"]), "--adapter", str(world["adapter"]),
                         "--out", str(tmp_path / "m.safetensors"), "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().startswith("wadi merge: error: No space left on device") and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_export_lora_retries_an_svd_that_does_not_converge(tmp_path, world, monkeypatch):
    from wadi_core import merge
    svd, calls = torch.linalg.svd, []

    def flaky(d, full_matrices=True):
        calls.append(d.dtype)
        if d.dtype == torch.float32:
            raise torch.linalg.LinAlgError("did not converge")
        return svd(d, full_matrices=full_matrices)
    monkeypatch.setattr(torch.linalg, "svd", flaky)
    result = merge.export_lora(world["sd"], [(world["adapter"], 1.0)], tmp_path / "l.safetensors", rank=4,
                               progress=False)
    assert result.layers > 0 and torch.float64 in calls
    monkeypatch.setattr(torch.linalg, "svd", lambda d, full_matrices=True: (_ for _ in ()).throw(
        torch.linalg.LinAlgError("never")))
    with pytest.raises(lorad.AdapterError, match="did not converge"):
        merge.export_lora(world["sd"], [(world["adapter"], 1.0)], tmp_path / "m.safetensors", rank=4, progress=False)
    assert not (tmp_path / "m.safetensors").exists()


def test_a_refused_distillation_leaves_no_folder_so_the_corrected_rerun_starts(tmp_path, world):
    from wadi_core.distill import Distiller
    with pytest.raises(ValueError, match="predicts 'sample'"):
        Distiller(distill_config(tmp_path, world, model=str(write_sd_folder(tmp_path / "x0", "sample"))),
                  progress=False)
    assert not (tmp_path / "run").exists()
    assert Distiller(distill_config(tmp_path, world, steps=1), progress=False).run().is_file()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in history] == [1]
