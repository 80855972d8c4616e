"""WaDi Distill inside a real ComfyUI (in this process, CPU), on the embedded teacher in models/diffusers: ComfyUI's
progress bar gets every step and the teacher-vs-student grid as its preview, ComfyUI's Stop (the interrupt flag
another thread sets) ends the run between steps with a checkpoint, and queueing the node again continues it to
the same student an uninterrupted run makes. The bundled workflow runs on the server in test_comfy_server.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfy_support import import_comfy_in_process

pytestmark = pytest.mark.slow  # ComfyUI in this process

EMBEDDED = Path(__file__).resolve().parents[1] / "wadi_core" / "shapes" / "model"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy-distill")
    folder_paths = import_comfy_in_process(base / "models")
    (base / "models" / "diffusers").mkdir()
    (base / "models" / "diffusers" / "wadi-shapes").symlink_to(EMBEDDED, target_is_directory=True)
    folder_paths.add_model_folder_path("diffusers", str(base / "models" / "diffusers"), is_default=True)
    previous = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(base / "output"))
    yield folder_paths
    folder_paths.set_output_directory(previous)


def run_node(name: str, steps: int, stop_at: int | None = None, seen: list | None = None):
    import comfy.model_management
    import comfy.utils

    from wadi_comfy.distill_node import WaDiDistill

    def hook(value, total, preview, node_id=None):
        if seen is not None:
            seen.append((value, total, preview))
        if stop_at is not None and value == stop_at:
            comfy.model_management.interrupt_current_processing(True)  # what ComfyUI's Stop button does
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with torch.inference_mode():  # as ComfyUI runs every node
            return WaDiDistill().distill("wadi-shapes", "", steps, 0, 3, name, True)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)


def test_the_node_lists_checkpoints_and_diffusers_folders(paths):
    from wadi_comfy.distill_node import WaDiDistill
    names = WaDiDistill.INPUT_TYPES()["required"]["model_name"][0]
    assert "wadi-shapes" in names


def test_stop_writes_a_checkpoint_and_queueing_again_continues_to_the_same_student(paths):
    import comfy.model_management

    seen = []
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run_node("stopped", 4, stop_at=2, seen=seen)
    run = Path(paths.get_output_directory()) / "wadi_distill" / "stopped"
    assert (run / "checkpoint").is_dir() and not (run / "student.safetensors").exists()
    assert [v for v, _, _ in seen][:3] == [0, 1, 2] and all(total == 4 for _, total, _ in seen)
    assert any(p is not None and p[0] == "JPEG" for _, _, p in seen)  # the grid, as ComfyUI previews it
    out = run_node("stopped", 4)
    name, preview = out["result"]
    assert name == "stopped.safetensors" and preview.shape[0] == 1 and preview.shape[-1] == 3
    loras = Path(paths.get_folder_paths("loras")[0])
    straight, _ = run_node("straight", 4)["result"]
    resumed, uninterrupted = load_file(str(loras / name)), load_file(str(loras / straight))
    assert resumed.keys() == uninterrupted.keys()
    assert all((resumed[k] == uninterrupted[k]).all() for k in resumed)


def test_bad_names_are_refused(paths):
    from wadi_comfy.distill_node import WaDiDistill
    with pytest.raises(ValueError, match="not a file name"):
        WaDiDistill().distill("wadi-shapes", "", 1, 0, 0, "../escape", True)
    with pytest.raises(FileNotFoundError, match="neither in models/checkpoints"):
        WaDiDistill().distill("missing.safetensors", "", 1, 0, 0, "x", True)
