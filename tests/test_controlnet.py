"""One-step and multi-step ControlNet generation (wadi_core.controlnet) against diffusers' own
ControlNet pipeline, and the refusal of a ControlNet made for another base."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wadi_core.tasks import controlnet as C
from wadi_core.sampling import onestep
from wadi_core.sampling import image_size
from wadi_core.models import load_components

PROMPT = "a red circle"


def random_controlnet(components, seed=0, **overrides):
    """A ControlNet for ``components`` whose zero-initialised output convolutions are made non-zero."""
    from diffusers import ControlNetModel
    torch.manual_seed(seed)
    net = C.new_controlnet(components)
    if overrides:
        net = ControlNetModel(**{**dict(net.config), **overrides})
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.5)
    return net.eval()


def control_images(n, size=32):
    images = np.zeros((n, size, size, 3), np.uint8)
    images[:, size // 4: size // 2, size // 4: 3 * size // 4] = 255
    return images


def test_one_step_controlnet_equals_diffusers_pipeline_with_lcm_at_999(sd_dir):
    from diffusers import LCMScheduler, StableDiffusionControlNetPipeline

    components = load_components(sd_dir)
    net = random_controlnet(components)
    size = image_size(components)
    hint = control_images(1, size)
    ours = C.generate(components, net, [PROMPT], hint, seeds=[3])
    pipe = StableDiffusionControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, controlnet=net, scheduler=LCMScheduler.from_config(components.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((1, 4, components.unet.config.sample_size, components.unet.config.sample_size),
                          generator=torch.Generator().manual_seed(3))
    from PIL import Image
    theirs = pipe(PROMPT, image=Image.fromarray(hint[0]), height=size, width=size, timesteps=[999],
                  guidance_scale=1.0, latents=latents, output_type="np").images
    theirs = (theirs * 255).round().astype(np.uint8)
    assert np.abs(theirs.astype(int) - ours.astype(int)).max() <= 2
    plain = onestep.generate(components, [PROMPT], [3], progress=False)
    assert np.abs(plain.astype(int) - ours.astype(int)).mean() > 0.3  # the control does something
    zero = C.generate(components, net, [PROMPT], hint, seeds=[3], scale=0.0)
    assert np.abs(plain.astype(int) - zero.astype(int)).max() <= 1  # scale 0 = no control


def test_multi_step_controlnet_with_cfg_gives_each_prompt_its_own_control(sd_dir):
    """Batched, chunked and CFG-doubled, every image equals the one drawn alone with its control."""
    components = load_components(sd_dir)
    net = random_controlnet(components)
    hints = control_images(3)
    hints[1] = 0
    together = C.generate(components, net, [PROMPT] * 3, hints, seeds=[1, 2, 3], steps=3, batch_size=2, scale=4.0)
    for i in range(3):
        alone = C.generate(components, net, [PROMPT], hints[i:i + 1], seeds=[i + 1], steps=3, scale=4.0)
        assert np.abs(together[i].astype(int) - alone[0].astype(int)).max() <= 1, i
    assert np.abs(together[0].astype(int) - together[1].astype(int)).mean() > 0.3  # the controls differ


def test_a_controlnet_for_another_base_is_refused(sd_dir):
    components = load_components(sd_dir)
    net = random_controlnet(components, cross_attention_dim=48)
    with pytest.raises(C.ControlNetMismatch, match="cross_attention_dim"):
        C.generate(components, net, [PROMPT], control_images(1), seeds=[0])
    with pytest.raises(ValueError, match="one per prompt"):
        C.generate(components, random_controlnet(components), [PROMPT, PROMPT], control_images(1))


def test_controlnet_train_resume_and_generate_commands(tmp_path, sd_dir):
    """Train from a JSONL data file on a tiny SD folder, stop, resume, then generate one step and multi-step."""
    from PIL import Image

    from wadi_cli.cli import main
    rows = []
    for i in range(3):
        Image.fromarray(control_images(1)[0]).save(tmp_path / f"hint{i}.png")
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"image{i}.png")
        rows.append(f'{{"image": "image{i}.png", "condition": "hint{i}.png", "caption": "a red circle"}}')
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(rows) + "\n")
    args = ["controlnet-train", "--teacher", str(sd_dir), "--data", str(data), "--out", str(tmp_path / "cn"),
            "--batch-size", "2", "--checkpoint-every", "2", "--quiet"]
    assert main(args + ["--steps", "3"]) == 0
    assert (tmp_path / "cn" / "checkpoint" / "state.pt").is_file() and (tmp_path / "cn" / "loss.png").is_file()
    assert main(args + ["--steps", "4", "--resume"]) == 0
    assert main(args + ["--steps", "4"]) == 2  # an existing output is not overwritten
    (tmp_path / "bad.jsonl").write_text('{"image": "image0.png"}\n')
    assert main(args[:4] + [str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "cn2"), "--steps", "1"]) == 2
    for extra in ([], ["--student", str(_student(tmp_path, sd_dir))]):
        out = tmp_path / f"gen{len(extra)}"
        assert main(["controlnet", "--controlnet", str(tmp_path / "cn" / "controlnet"), "--model", str(sd_dir),
                     "--prompt", "a red circle", "--control", str(tmp_path / "hint0.png"), "--steps", "2",
                     "--out", str(out), *extra]) == 0
        assert (out / "grid.png").is_file()


def _student(tmp_path, sd_dir):
    from wadi_core import students
    components = load_components(sd_dir)
    spec = students.AdapterSpec("lorad", 2, "unet-student")
    students.add_adapter(components.unet, spec)
    return students.save_adapter_file(components.unet, spec, tmp_path / "student.safetensors")


def test_shipped_shapes_controlnet_places_the_teachers_shapes(tmp_path):
    """The shipped silhouette ControlNet: the teacher's shapes land on the condition (mask IoU), while
    without it (scale 0) they do not."""
    import json

    from wadi_cli.cli import main
    iou = {}
    for scale in (1.0, 0.0):
        out = tmp_path / f"scale{scale}"
        assert main(["controlnet", "--eval", "24", "--steps", "10", "--scale", str(scale), "--out", str(out)]) == 0
        iou[scale] = json.loads((out / "metrics.json").read_text())["mask_iou"]
    # Without the ControlNet the teacher still follows the captions' positions (0.42 with the teacher of
    # 2026-11-24, session 8), so the test asks for a clear gain rather than a fixed ceiling.
    assert iou[1.0] >= 0.6 and iou[1.0] - iou[0.0] >= 0.25, iou
