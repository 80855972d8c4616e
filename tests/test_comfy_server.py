"""The node pack in a real ComfyUI server (CPU): the nodes are listed, every bundled workflow runs
through ``POST /prompt`` on random-weight SD1.5 files, bad files give a node error and the server
goes on serving."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from comfy_support import ComfyServer, ui_to_api
from wadi_core.models import embeddings

pytestmark = pytest.mark.slow  # a real ComfyUI (a server, or in this process): minutes

WORKFLOWS = Path(__file__).resolve().parents[1] / "example_workflows"
_spec = importlib.util.spec_from_file_location("wadi_workflows_build", WORKFLOWS / "build.py")
workflow_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workflow_build)

NODE_IDS = ("WaDiLoadLoRaD", "WaDiOneStepSigmas", "WaDiOneStepSampler", "WaDiMergeSave", "WaDiExportLoRA",
            "WaDiTrainLoRaD", "WaDiDistill")
EMBEDDED = "wadi-shapes"  # the embedded teacher as a diffusers folder in models/diffusers
EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "wadi_core" / "shapes" / "model"
# Distilling the random full-size SD1.5 takes hours on these CPUs: the distill workflow has its own test below,
# which distils the embedded teacher instead.
RUNNABLE = tuple(g for g in workflow_build.GRAPHS if g is not workflow_build.distill)


def random_controlnet(path: Path) -> Path:
    """An SD1.5-shaped ControlNet with random weights, in diffusers layout (ComfyUI converts it)."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = ControlNetModel(cross_attention_dim=768, attention_head_dim=8)
    with torch.no_grad():  # a new ControlNet starts with zero output convolutions: give it an effect
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() and not tensor.any():
                tensor.normal_(0, 0.02)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, sd15_random):
    from PIL import Image

    base = tmp_path_factory.mktemp("comfy-base")
    models = base / "models"
    for kind in ("checkpoints", "loras", "controlnet", "embeddings", "diffusion_models", "diffusers"):
        (models / kind).mkdir(parents=True)
    (models / "diffusers" / EMBEDDED).symlink_to(EMBEDDED_MODEL, target_is_directory=True)
    (models / "diffusion_models" / workflow_build.RELEASED_UNET).symlink_to(sd15_random["released"])
    (models / "loras" / workflow_build.EXTRACTED).symlink_to(sd15_random["extracted"])
    for name in (workflow_build.CHECKPOINT, workflow_build.MERGED_CHECKPOINT):
        (models / "checkpoints" / name).symlink_to(sd15_random["checkpoint"])
    (models / "loras" / workflow_build.STUDENT).symlink_to(sd15_random["student"])
    (models / "loras" / workflow_build.STYLE).symlink_to(sd15_random["style"])
    (models / "loras" / "plain-lora.safetensors").write_bytes(b"not a safetensors file at all")
    random_controlnet(models / "controlnet" / workflow_build.CONTROLNET)
    (base / "input").mkdir()
    edges = Image.new("RGB", (64, 64), "black")
    edges.paste((255, 255, 255), (16, 16, 48, 20))
    edges.save(base / "input" / workflow_build.CONTROL_IMAGE)
    for i, name in enumerate(workflow_build.SUBJECT_IMAGES):
        subject = Image.new("RGB", (64, 64), "white")
        subject.paste((200, 120, 30), (16 + 4 * i, 16, 48, 48))
        subject.save(base / "input" / name)
    # a relation token for CLIP-L (768 values), as wadi reversion writes it for an SD1.5 teacher
    embeddings.save_textual_inversion(torch.randn(768, generator=torch.Generator().manual_seed(0)) * 0.02,
                                      models / "embeddings" / f"{workflow_build.EMBEDDING}.safetensors")
    host = ComfyServer(base)
    host.base = base
    host.object_info = host.get("/object_info")
    yield host
    host.stop()


def small(prompt: dict) -> dict:
    """The same prompt at 64x64 pixels (8x8 latents): the test checks wiring, not pictures."""
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "WaDiTrainLoRaD":
            node["inputs"].update(steps=2)
    return prompt


def error_text(entry: dict) -> str:
    return json.dumps(entry.get("status", {}).get("messages", []))


def test_every_node_is_listed_with_its_inputs(server):
    for node_id in NODE_IDS:
        assert node_id in server.object_info, node_id
    loader = server.object_info["WaDiLoadLoRaD"]["input"]["required"]
    assert workflow_build.STUDENT in loader["adapter_name"][0]
    assert server.object_info["WaDiOneStepSampler"]["category"] == "WaDi"


@pytest.mark.parametrize("graph", RUNNABLE, ids=lambda g: g.__name__)
def test_bundled_workflow_runs(server, graph):
    workflow = json.loads((WORKFLOWS / f"{graph().name}.json").read_text())
    entry = server.run(small(ui_to_api(workflow, server.object_info)))
    assert entry["status"]["status_str"] == "success", error_text(entry)
    if graph is workflow_build.merge_save:
        saved = list((server.base / "output" / "checkpoints").glob("wadi-merged*.safetensors"))
        assert saved and saved[0].stat().st_size > 1e9
        return
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    assert images
    files = [server.base / "output" / image["subfolder"] / image["filename"] for image in images]
    assert all(f.is_file() and f.stat().st_size > 100 for f in files)


def image_of_variant(server, workflow_name: str, class_type: str, inputs: dict, prefix: str):
    """Run a bundled workflow with ``inputs`` set on its ``class_type`` nodes; the saved image as an array."""
    from PIL import Image
    import numpy as np

    workflow = json.loads((WORKFLOWS / f"{workflow_name}.json").read_text())
    prompt = small(ui_to_api(workflow, server.object_info))
    for node in prompt.values():
        if node["class_type"] == class_type:
            node["inputs"].update(inputs)
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"wadi/{prefix}"
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", error_text(entry)
    image = next(i for o in entry["outputs"].values() for i in o.get("images", []))
    return np.asarray(Image.open(server.base / "output" / image["subfolder"] / image["filename"])).astype(int)


def test_the_extracted_adapter_draws_what_the_released_unet_draws(server):
    """The authors' file through ComfyUI's own UNet loader and its wadi extract through our LoRaD loader are one
    model: the same prompt and seed give the same image, up to the fp16 rounding of the released file."""
    import json as json_module

    released = image_of_variant(server, "wadi_released_unet", "WaDiOneStepSampler", {"seed": 5}, "released-5")
    workflow = json_module.loads((WORKFLOWS / "wadi_extracted_adapter.json").read_text())
    prompt = small(ui_to_api(workflow, server.object_info))
    for node in prompt.values():
        if node["class_type"] == "WaDiOneStepSampler":
            node["inputs"]["seed"] = 5
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", error_text(entry)
    from PIL import Image
    import numpy as np
    full = next(i for o in entry["outputs"].values() for i in o.get("images", []) if "extracted-1.0" in i["filename"])
    extracted = np.asarray(Image.open(server.base / "output" / full["subfolder"] / full["filename"])).astype(int)
    assert np.abs(extracted - released).mean() < 4


def test_controlnet_changes_the_one_step_image(server):
    """The one-step sampler honours ControlNet conditioning (strength 0 vs 1 give different latents)."""
    off, on = (image_of_variant(server, "wadi_onestep_controlnet", "ControlNetApplyAdvanced", {"strength": strength},
                                f"cn{strength}") for strength in (0.0, 1.0))
    assert abs(off - on).mean() > 1


def test_the_relation_embedding_is_used_by_the_one_step_sampler(server):
    """ComfyUI loads the textual-inversion file wadi reversion writes: the prompt with it differs from the
    same prompt with an embedding name that does not exist (which ComfyUI drops)."""
    used, dropped = (image_of_variant(server, "wadi_reversion_onestep", "CLIPTextEncode",
                                      {"text": f"a cat embedding:{name} a basket"}, f"rev-{name}")
                     for name in (workflow_build.EMBEDDING, "no_such_embedding"))
    assert abs(used - dropped).mean() > 0.5


def test_the_trained_adapter_is_saved_for_the_loader(server):
    saved = sorted((server.base / "models" / "loras").glob("wadi_dreambooth*.safetensors"))
    if not saved:  # the bundled workflow test runs first in file order; run it here when selected alone
        workflow = json.loads((WORKFLOWS / "wadi_dreambooth_train.json").read_text())
        entry = server.run(small(ui_to_api(workflow, server.object_info)))
        assert entry["status"]["status_str"] == "success", error_text(entry)
        saved = sorted((server.base / "models" / "loras").glob("wadi_dreambooth*.safetensors"))
    from wadi_core.lorad.io import read_adapter
    assert read_adapter(saved[0]).family == "sd15"
    assert any(saved[0].name == name for name in server.get("/object_info/WaDiLoadLoRaD")["WaDiLoadLoRaD"]["input"]
               ["required"]["adapter_name"][0])


def test_the_distill_workflow_distils_a_student_for_the_loader(server):
    """The bundled wadi_distill workflow with its WaDi Distill node on the embedded teacher for 4 steps (the
    nodes that draw with the student on SD1.5 are left out: an embedded-world student does not fit SD1.5): the
    student lands in models/loras, the teacher-vs-student preview is saved, the run folder holds the grids."""
    from wadi_core.lorad.io import read_adapter
    workflow = json.loads((WORKFLOWS / "wadi_distill.json").read_text())
    prompt = ui_to_api(workflow, server.object_info)
    distill = next(k for k, n in prompt.items() if n["class_type"] == "WaDiDistill")
    prompt[distill]["inputs"].update(model_name=EMBEDDED, prompts="", steps=4)
    users = {k for k, n in prompt.items() if [distill, 0] in n["inputs"].values()}
    while True:  # the SD1.5 chain after the student: every node fed (directly or not) by the loader
        more = {k for k, n in prompt.items() if any(isinstance(v, list) and v[0] in users for v in n["inputs"].values())}
        if more <= users:
            break
        users |= more
    prompt = {k: n for k, n in prompt.items() if k not in users and n["class_type"] not in ("CheckpointLoaderSimple",
                                                                                             "EmptyLatentImage",
                                                                                             "CLIPTextEncode")}
    entry = server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success", error_text(entry)
    student = server.base / "models" / "loras" / f"{workflow_build.DISTILLED}.safetensors"
    assert student.is_file() and read_adapter(student).family == "shapes"
    images = [i for o in entry["outputs"].values() for i in o.get("images", [])]
    assert any(i["filename"].startswith("distill-preview") for i in images)
    run = server.base / "output" / "wadi_distill" / workflow_build.DISTILLED
    assert (run / "samples" / "latest.png").is_file() and (run / "student.safetensors").is_file()


def test_bad_adapter_gives_a_node_error_and_the_server_goes_on(server):
    workflow = json.loads((WORKFLOWS / "wadi_onestep_lorad.json").read_text())
    prompt = small(ui_to_api(workflow, server.object_info))
    loader = next(n for n in prompt.values() if n["class_type"] == "WaDiLoadLoRaD")
    loader["inputs"]["adapter_name"] = "plain-lora.safetensors"
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    assert "not a readable safetensors file" in error_text(entry)
    loader["inputs"]["adapter_name"] = workflow_build.STUDENT
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", error_text(entry)


def test_committed_workflows_match_their_declarations():
    assert workflow_build.main(["--check"]) == 0
