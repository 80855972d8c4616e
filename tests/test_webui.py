"""The web UI in a real browser (Debian's chromium driven by Playwright): distil with progress,
stop, resume, generate from the result, see an error for a bad path. Plus the A1111 / Forge
registration against a stand-in of ``modules.script_callbacks``, and the actions without a browser."""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


def require_browser():
    pytest.importorskip("gradio")
    if not CHROMIUM.exists() or __import__("importlib").util.find_spec("playwright") is None:
        if os.environ.get("WADI_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium (apt-get install chromium) and playwright are needed for the browser tests")
        pytest.skip("no chromium/playwright here (.ci/run installs them)")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    require_browser()
    work = tmp_path_factory.mktemp("ui")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "ui.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "wadi_cli.cli", "ui", "--port", str(port)], cwd=work,
                               stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("wadi ui did not start:\n" + (work / "ui.log").read_text()[-3000:])
            time.sleep(0.5)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        yield types.SimpleNamespace(page=page, work=work, url=url)
        browser.close()
    process.terminate()
    process.wait(timeout=30)
    log.close()


def fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")  # gradio takes the value on change/blur


def status_text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text()


def wait_for_text(page, elem_id: str, words: tuple[str, ...], timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = status_text(page, elem_id)
        if any(w in text for w in words):
            return text
        time.sleep(0.5)
    raise AssertionError(f"#{elem_id} never showed {words}; it shows: {status_text(page, elem_id)!r}")


@pytest.mark.slow
def test_distill_stop_resume_generate_and_a_bad_path_in_the_browser(ui):
    page, run = ui.page, ui.work / "run"
    page.get_by_role("tab", name="Distill").click()
    fill(page, "wadi_steps", 16)
    fill(page, "wadi_distill_out", run)
    page.locator("#wadi_start").click()
    wait_for_text(page, "wadi_distill_status", ("step 1 ", "step 2 ", "step 3 "))
    page.locator("#wadi_samples img").first.wait_for(timeout=60_000)  # the step-0 grid, then refreshed
    page.screenshot(path=str(ui.work / "1-distilling.png"))
    page.locator("#wadi_stop").click()
    stopped = wait_for_text(page, "wadi_distill_status", ("stopped", "finished", "failed"))
    assert "stopped" in stopped, stopped
    assert (run / "checkpoint").is_dir() and not (run / "student.safetensors").exists()
    page.locator("#wadi_resume").click()
    finished = wait_for_text(page, "wadi_distill_status", ("finished", "failed"), timeout=900)  # (its grids reuse the teacher images kept in the checkpoint)
    assert "finished" in finished and "step 16 / 16" in finished, finished
    page.locator("#wadi_loss img").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ui.work / "2-finished.png"))
    assert (run / "student.safetensors").is_file()

    page.get_by_role("tab", name="Generate").click()
    fill(page, "wadi_adapters", run / "student.safetensors")
    page.locator("#wadi_generate").click()
    assert "images/s" in wait_for_text(page, "wadi_generate_status", ("images/s", "Error"))
    page.locator("#wadi_gallery img").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ui.work / "3-generated.png"))

    fill(page, "wadi_model", "/no/such/model")
    page.locator("#wadi_generate").click()
    error = wait_for_text(page, "wadi_generate_status", ("Error",))
    assert "/no/such/model does not exist" in error
    page.screenshot(path=str(ui.work / "4-error.png"))
    with urllib.request.urlopen(ui.url, timeout=10) as response:  # the server is still up
        assert response.status == 200


@pytest.mark.slow
def test_dreambooth_tab_trains_with_progress_and_shows_the_samples(ui):
    page, run = ui.page, ui.work / "subject"
    page.get_by_role("tab", name="DreamBooth").click()
    fill(page, "wadi_db_steps", 6)
    fill(page, "wadi_db_out", run)
    page.locator("#wadi_db_start").click()
    finished = wait_for_text(page, "wadi_db_status", ("finished", "failed"), timeout=300)
    assert "finished" in finished and "step 6 / 6" in finished, finished
    page.locator("#wadi_db_gallery img").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ui.work / "5-dreambooth.png"))
    assert (run / "subject.safetensors").is_file()


def test_a1111_registers_the_tab(monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    registered = []
    modules = types.ModuleType("modules")
    # the host's root: Forge and Forge Neo keep the tokenizers of the models they load in backend/huggingface
    paths_internal = types.ModuleType("modules.paths_internal")
    paths_internal.script_path = str(tmp_path)
    modules.paths_internal = paths_internal
    monkeypatch.setitem(sys.modules, "modules.paths_internal", paths_internal)
    from wadi_core.models import single_file
    from wadi_core.shapes.components import write_tokenizer
    monkeypatch.setattr(single_file, "TOKENIZER_FOLDERS", [])
    hub = tmp_path / "backend" / "huggingface"
    clip = write_tokenizer(hub / "runwayml" / "stable-diffusion-v1-5" / "tokenizer")
    other = write_tokenizer(hub / "Qwen" / "Qwen-Image" / "tokenizer")  # a BPE vocabulary too, not CLIP's
    config = other / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"CLIPTokenizer"', '"Qwen2Tokenizer"'))
    callbacks = types.ModuleType("modules.script_callbacks")
    callbacks.on_ui_tabs = registered.append
    callbacks.on_before_ui = lambda callback: None
    modules.script_callbacks = callbacks
    # the host's checkpoint list, as A1111, Forge and Forge Neo keep it: CheckpointInfo objects by title
    sd_models = types.ModuleType("modules.sd_models")
    files = ["/sd/models/Stable-diffusion/v2-1_512-ema-pruned.safetensors", "/sd/models/Stable-diffusion/a.ckpt"]
    sd_models.checkpoints_list = {f"{Path(f).name} [0123456789]": types.SimpleNamespace(filename=f) for f in files}
    modules.sd_models = sd_models
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.script_callbacks", callbacks)
    monkeypatch.setitem(sys.modules, "modules.sd_models", sd_models)
    runpy.run_path(str(ROOT / "scripts" / "wadi_webui.py"))
    assert len(registered) == 1
    [(blocks, title, elem_id)] = registered[0]()
    import gradio as gr

    from wadi_webui import actions
    assert isinstance(blocks, gr.Blocks) and title == "WaDi" and elem_id == "wadi_tab"
    fields = [c for c in blocks.blocks.values() if getattr(c, "label", None) in ("Model", "Model (the teacher)")]
    assert len(fields) == 6 and all(isinstance(c, gr.Dropdown) and c.allow_custom_value for c in fields)
    for field in fields:  # the embedded model first, then the host's checkpoint files (newer gradio: (name, value))
        choices = [c[1] if isinstance(c, tuple) else c for c in field.choices]
        assert choices == [actions.EMBEDDED, *sorted(files)] and field.value == actions.EMBEDDED
    assert single_file.TOKENIZER_FOLDERS == [clip]  # so a host's checkpoint needs no tokenizer/ beside it
    tokenizer = single_file.find_tokenizer(tmp_path / "models" / "Stable-diffusion" / "a.safetensors", "!")
    assert tokenizer.pad_token == "!" and tokenizer.model_max_length == 77


def test_actions_refuse_bad_input_with_one_clear_sentence(tmp_path):
    from wadi_webui import actions
    with pytest.raises(actions.UIError, match="does not exist"):
        actions.model_path(str(tmp_path / "missing"))
    with pytest.raises(actions.UIError, match="at least 1"):
        actions.start_distillation("", "", "", "lorad", 0, "lorad", 8, 10, 1e-3, 1e-2, 2, 1, str(tmp_path / "r"))
    with pytest.raises(actions.UIError, match="fake model guidance must be 1"):
        actions.start_distillation("", "", "", "lorad", 4, "lorad", 8, 10, 1e-3, 1e-2, 2, 0.5, str(tmp_path / "r"))
    with pytest.raises(actions.UIError, match="needs prompts"):
        actions.start_distillation(str(tmp_path), "", "", "lorad", 4, "lorad", 8, 10, 1e-3, 1e-2, 2, 1,
                                   str(tmp_path / "r"))
    with pytest.raises(actions.UIError, match="write a prompt"):
        actions.generate_images("", "", "  ", 0, 1, False)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(actions.user_errors(), match="adapter|safetensors"):
        actions.generate_images("", str(tmp_path / "notes.txt"), "a red circle", 0, 1, False)


def test_the_distill_fields_follow_the_recipe_of_the_chosen_teacher(tmp_path):
    """A real teacher gets the paper's recipe in every field, the embedded one (or a copy of it) its own."""
    import shutil

    from conftest import write_sd_folder
    from wadi_core.shapes.components import MODEL_DIR
    from wadi_webui import actions
    embedded = (24, 8, 800, 5e-3, 1e-2, 2.0, 1.0)
    paper = (256, 32, 20000, 1e-4, 1e-2, 1.5, 1.5)  # the fake model's guidance: the teacher's, as in the paper
    assert actions.recipe_fields(actions.EMBEDDED, "lorad", "lorad") == embedded
    shutil.copytree(MODEL_DIR, tmp_path / "copy")
    assert actions.recipe_fields(str(tmp_path / "copy"), "lorad", "lorad") == embedded
    assert actions.recipe_fields(str(write_sd_folder(tmp_path / "sd")), "lorad", "lorad") == paper
    assert actions.recipe_fields(str(tmp_path / "not-there-yet"), "full", "lorad")[3] == 1e-5


def test_the_learning_rate_fields_follow_the_adapter_kind(tmp_path):
    from wadi_webui import actions
    assert actions.learning_rate_for("student", "lorad", actions.EMBEDDED) == 5e-3
    assert actions.learning_rate_for("student", "full", "") == 1e-4
    assert actions.learning_rate_for("fake", "lora", actions.EMBEDDED) == 3e-3
    assert actions.learning_rate_for("student", "full", str(tmp_path)) == 1e-5  # a real teacher: DMD2's rate
    assert actions.learning_rate_for("student", "full", str(actions.MODEL_DIR)) == 1e-4  # the embedded one by path


def test_a_second_start_on_a_training_folder_is_refused(tmp_path):
    from wadi_core.distill import DistillConfig
    from wadi_webui import jobs
    busy = jobs.DistillJob(DistillConfig.from_options(out=str(tmp_path / "run")))
    busy.state.status = "running"
    jobs._RUNNING[busy.out] = busy
    try:
        with pytest.raises(jobs.JobRefused, match="already training"):
            jobs.DistillJob.start(DistillConfig.from_options(out=str(tmp_path / "run")))
    finally:
        del jobs._RUNNING[busy.out]


def test_analyze_action_returns_plots_and_report(tmp_path):
    from conftest import randomize
    from wadi_core import students
    from wadi_core.models import load_components
    from wadi_core.shapes.components import MODEL_DIR
    from wadi_webui import actions
    unet = load_components(MODEL_DIR).unet
    spec = students.AdapterSpec("lorad", 4, "unet-student")
    randomize(students.add_adapter(unet, spec), std=0.02)
    adapter = students.save_adapter_file(unet, spec, tmp_path / "student.safetensors")
    plots, report = actions.analyze_models("", str(adapter), str(tmp_path / "analysis"), False, False)
    assert [Path(p).name for p in plots] == ["changes.png", "svd_energy.png"]
    assert "Row directions turned" in report
    with pytest.raises(actions.UIError, match="does not exist"):
        actions.analyze_models("", str(tmp_path / "nothing.safetensors"), str(tmp_path / "a2"), False, False)


def test_controlnet_action_draws_with_the_shipped_controlnet(tmp_path):
    from wadi_core import students
    from wadi_core.models import load_components
    from wadi_core.shapes.components import MODEL_DIR
    from wadi_webui import actions
    unet = load_components(MODEL_DIR).unet
    spec = students.AdapterSpec("lorad", 4, "unet-student")
    students.add_adapter(unet, spec)
    adapter = students.save_adapter_file(unet, spec, tmp_path / "student.safetensors")
    control = __import__("numpy").zeros((32, 32, 3), "uint8")
    control[8:24, 8:24] = 255
    gallery, text = actions.controlnet_images("", str(adapter), "", control, "a red square", 0, True)
    assert len(gallery) == 2 and gallery[0][0].shape == (32, 32, 3) and "teacher 25 steps" in text
    with pytest.raises(actions.UIError, match="upload a control image"):
        actions.controlnet_images("", str(adapter), "", None, "a red square", 0, False)
    with pytest.raises(actions.UIError, match="not a ControlNet folder"):
        actions.controlnet_images("", str(adapter), str(tmp_path), control, "a red square", 0, False)


def test_generate_action_at_twice_the_size(tmp_path):
    from wadi_core import students
    from wadi_core.models import load_components
    from wadi_core.shapes.components import MODEL_DIR
    from wadi_webui import actions
    unet = load_components(MODEL_DIR).unet
    spec = students.AdapterSpec("lorad", 4, "unet-student")
    students.add_adapter(unet, spec)
    adapter = students.save_adapter_file(unet, spec, tmp_path / "student.safetensors")
    gallery, text = actions.generate_images("", str(adapter), "a red circle", 0, 2, False, True)
    assert len(gallery) == 2 and gallery[0][0].shape == (64, 64, 3) and "2x" in text
    import torch
    assert f"on {'cuda' if torch.cuda.is_available() else 'cpu'} (" in text  # the Device field's "auto"
    with pytest.raises(ValueError, match="--device cuda:7: "):  # a device this machine lacks, before any drawing
        actions.generate_images("", str(adapter), "a red circle", 0, 1, False, False, device="cuda:7")
    with pytest.raises(actions.UIError, match="needs a student"):
        actions.generate_images("", "", "a red circle", 0, 1, False, True)


def test_reversion_and_dreambooth_actions_run_the_commands(tmp_path):
    from wadi_webui import actions
    job = actions.start_reversion("", "", "inside", "<R>", "", 2, str(tmp_path / "rev"))
    job.wait(300)
    assert job.state.status == "finished", job.state.message
    assert "step 2 / 2" in actions.progress_text(job) and "denoise" in actions.progress_text(job)
    assert [Path(p).name for p in actions.existing_files(job.out, ["samples.png", "loss.png", "x.png"])] == [
        "samples.png", "loss.png"]
    gallery, text = actions.generate_images("", "", "a red circle <R> a blue square", 0, 1, False, False,
                                            str(tmp_path / "rev" / "reversion.safetensors"))
    assert len(gallery) == 1 and "images/s" in text
    with pytest.raises(actions.UIError, match="exemplar folder .* does not exist"):
        actions.start_reversion("", str(tmp_path / "none"), "inside", "<R>", "", 2, str(tmp_path / "r2"))
    with pytest.raises(actions.UIError, match="instance prompt"):
        actions.start_dreambooth("", "", " ", "", "", "lorad", 4, 2, str(tmp_path / "db"))
    with pytest.raises(actions.UIError, match="student .* does not exist"):
        actions.start_dreambooth("", "", "an orange sks square", "", str(tmp_path / "s.safetensors"), "lorad", 4, 2,
                                 str(tmp_path / "db"))
    bad = actions.start_dreambooth("", "", "an orange square", "an orange square", "", "lorad", 4, 2,
                                   str(tmp_path / "db"))
    bad.wait(60)
    assert bad.state.status == "failed" and "rare identifier" in bad.state.message
    for start, values in ((actions.start_reversion, ("", "", "inside", "<R>", "", 2)),
                          (actions.start_dreambooth, ("", "", "an orange sks square", "", "", "lorad", 4, 2))):
        with pytest.raises(ValueError, match="--device cuda:7: "):  # refused at once, not in the background
            start(*values, str(tmp_path / "elsewhere"), "", "cuda:7")
    assert not (tmp_path / "elsewhere").exists()
    again = actions.start_reversion("", "", "inside", "<R>", "", 2, str(tmp_path / "rev"))  # the same folder
    again.wait(60)
    assert again.state.status == "failed" and "already exists" in again.state.message
    assert (tmp_path / "rev" / "reversion.safetensors").is_file()  # nothing lost


@pytest.mark.parametrize("kind", ["v_prediction", "sdxl"])
def test_generate_action_on_v_prediction_and_sdxl_teachers(tmp_path, kind):
    """The Generate tab's one-step images of a v-prediction and an SDXL teacher are the library's one-step images
    (x0 from v; SDXL's pooled embedding and time ids), and the teacher's multi-step images come beside them."""
    import numpy as np

    from conftest import write_sd_folder, write_sdxl_folder
    from wadi_core.models import load_components
    from wadi_core.sampling import onestep
    from wadi_webui import actions
    folder = write_sdxl_folder(tmp_path / "xl") if kind == "sdxl" else write_sd_folder(tmp_path / "v", kind)
    gallery, text = actions.generate_images(str(folder), "", "a red circle", 3, 1, True)
    assert len(gallery) == 2 and "slower" in text
    want = onestep.generate(load_components(folder), ["a red circle"], [3], progress=False)
    assert np.abs(gallery[0][0].astype(int) - want[0].astype(int)).max() <= 1


def test_merge_action_writes_what_the_teacher_is(tmp_path):
    """The Distill tab's merge button: a folder teacher gives a diffusers folder, a single-file teacher (a host's
    checkpoint) a single file; both hold the finished student's rotations."""
    import torch

    from wadi_core import students
    from wadi_core.merge import merge_checkpoint
    from wadi_core.models import load_components, open_checkpoint
    from wadi_core.shapes.components import MODEL_DIR
    from wadi_webui import actions
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(actions.UIError, match="let the distillation finish first"):
        actions.merge_student(str(out), "")
    unet = load_components(MODEL_DIR).unet
    spec = students.AdapterSpec("lorad", 4, "unet-student")
    with torch.no_grad():
        for p in students.add_adapter(unet, spec):
            p.normal_(0, 0.3)
    student = students.save_adapter_file(unet, spec, out / "student.safetensors")
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    want = open_checkpoint(merge_checkpoint(MODEL_DIR, [(student, 1.0)], tmp_path / "want.safetensors",
                                            progress=False)).read(layer)
    assert "merged (a diffusers folder" in actions.merge_student(str(out), "")
    assert torch.allclose(open_checkpoint(out / "merged").read(layer).float(), want.float(), atol=1e-3)  # fp16 file
    single = merge_checkpoint(MODEL_DIR, [(student, 0.0)], tmp_path / "teacher.safetensors", progress=False)
    assert "merged.safetensors (a single-file checkpoint" in actions.merge_student(str(out), str(single))
    assert torch.equal(open_checkpoint(out / "merged.safetensors").read(layer), want)
    assert not torch.allclose(open_checkpoint(single).read(layer).float(), want.float(), atol=1e-2)
