"""SDXL teachers: prompts, added conditions, one-step sampling, merge and export, full-size key names, bad input.

Distillation, exact resume and generation from the student and from the merged export run on the tiny SDXL folder
in test_distill.py (its ``any_sd_dir`` fixture); here every piece is checked against diffusers' own SDXL code.
"""

from __future__ import annotations

import pytest
import torch

from wadi_core import lorad
from wadi_core.lorad import AdapterError
from wadi_core.models import keys, load_components
from wadi_core.models.families import build_on_meta
from wadi_core.models.sdxl import SDXLUNet2DConditionModel, pack, pooled_width, unpack

from conftest import random_student, write_sdxl_folder


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """The tiny SDXL folder, our components of it, and diffusers' StableDiffusionXLPipeline of the same folder."""
    from diffusers import StableDiffusionXLPipeline
    folder = write_sdxl_folder(tmp_path_factory.mktemp("xl") / "sdxl")
    return folder, load_components(folder), StableDiffusionXLPipeline.from_pretrained(str(folder))


def diffusers_conditions(pipe, prompt: str, latent_side: int):
    """What diffusers' SDXL pipeline passes its UNet for ``prompt`` at the image size of ``latent_side``."""
    hidden, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    side = latent_side * pipe.vae_scale_factor
    ids = pipe._get_add_time_ids((side, side), (0, 0), (side, side), dtype=torch.float32,
                                 text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    return hidden, {"text_embeds": pooled, "time_ids": ids}


def test_pack_and_unpack_are_inverse():
    hidden, pooled = torch.randn(2, 5, 12), torch.randn(2, 7)
    text = pack(hidden, pooled)
    assert text.shape == (2, 6, 12)
    got_hidden, got_pooled = unpack(text, 7)
    assert torch.equal(got_hidden, hidden) and torch.equal(got_pooled, pooled)
    with pytest.raises(ValueError, match="wider than the text features"):
        pack(torch.randn(1, 5, 4), torch.randn(1, 7))


@torch.no_grad()
def test_prompts_and_unet_call_equal_diffusers_sdxl_pipeline(sdxl):
    """Our packed text carries what the pipeline computes (both encoders' penultimate states, the pooled
    embedding), and our UNet call with it equals the plain UNet called as the pipeline calls it."""
    _, components, pipe = sdxl
    assert isinstance(components.unet, SDXLUNet2DConditionModel)
    text = components.encode_prompts(["a red circle"])
    hidden, conditions = diffusers_conditions(pipe, "a red circle", 16)
    assert torch.allclose(text[:, :-1], hidden, atol=1e-6)
    assert torch.allclose(text[:, -1, :pooled_width(components.unet.config)], conditions["text_embeds"], atol=1e-6)
    x = torch.randn(1, 4, 16, 16)
    ours = components.unet(x, 999, text).sample
    theirs = pipe.unet(x, 999, hidden, added_cond_kwargs=conditions).sample
    assert torch.allclose(ours, theirs, atol=1e-5)
    # the added conditions are used: another pooled embedding changes the output
    other = text.clone()
    other[:, -1] += 1.0
    assert (components.unet(x, 999, other).sample - ours).abs().max() > 1e-3


@torch.no_grad()
def test_one_step_generation_equals_the_formula(sdxl):
    """x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) at t = 999, eps from the UNet as diffusers' pipeline calls it."""
    from wadi_core.sampling.onestep import predict_x0
    _, components, pipe = sdxl
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = components.encode_prompts(["a red circle", "a blue square"])
    got = predict_x0(components.unet, components.scheduler, noise, text)
    abar = components.scheduler.alphas_cumprod[999]
    eps = []
    for i, prompt in enumerate(["a red circle", "a blue square"]):
        hidden, conditions = diffusers_conditions(pipe, prompt, 16)
        eps.append(pipe.unet(noise[i:i + 1], 999, hidden, added_cond_kwargs=conditions).sample)
    want = (noise - (1 - abar).sqrt() * torch.cat(eps)) / abar.sqrt()
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_merge_to_a_single_file_in_the_layout_comfyui_and_a1111_load(sdxl, tmp_path):
    """A LoRaD merged into the SDXL folder and written as one .safetensors: diffusers' own LDM converters read its
    UNet back as our merged UNet and its second text encoder (OpenCLIP names) back as the folder's; wadi reads the
    file as a checkpoint with the UNet's diffusers names, so it merges again."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_open_clip_checkpoint
    from safetensors.torch import load_file

    from wadi_core.merge import _rotated_backbone, merge_checkpoint, plan_merge
    from wadi_core.models import open_checkpoint

    folder, components, pipe = sdxl
    adapter = random_student(components.unet, tmp_path / "xl.safetensors")
    out = merge_checkpoint(folder, [(adapter, 1.0)], tmp_path / "merged.safetensors", progress=False)
    state = load_file(str(out))
    want = _rotated_backbone(plan_merge(folder, [(adapter, 1.0)]), progress=False)
    unet = convert_ldm_unet_checkpoint(state, dict(pipe.unet.config))
    assert set(unet) == set(want) and all(torch.equal(unet[k], want[k]) for k in want)
    assert any(not torch.equal(want[k], v) for k, v in pipe.unet.state_dict().items())  # the merge did rotate
    clip_g = convert_open_clip_checkpoint(pipe.text_encoder_2, state, prefix=keys.LDM_SDXL_CLIP_G)
    own = {k: v for k, v in pipe.text_encoder_2.state_dict().items() if not k.endswith("position_ids")}
    assert set(clip_g) == set(own) and all(torch.allclose(clip_g[k], own[k]) for k in own)
    clip_l = {k[len(keys.LDM_SDXL_CLIP_L):] for k in state if k.startswith(keys.LDM_SDXL_CLIP_L)}
    assert len(clip_l) == len(pipe.text_encoder.state_dict())
    assert open_checkpoint(out).shapes.keys() == want.keys()  # label_emb reads back as SDXL's add_embedding


def test_every_full_size_sdxl_unet_key_converts_and_diffusers_agrees():
    unet = build_on_meta("sdxl")
    state = unet.state_dict()
    mapping = keys.unet_name_map(state)
    assert len(mapping) == len(set(mapping.values())) == len(state) == 1680
    layout = keys.UNetLayout.from_ldm_keys(mapping.values())
    assert {keys.unet_from_ldm(v, layout): k for k, v in mapping.items()} == {k: k for k in state}
    assert mapping["add_embedding.linear_1.weight"] == "label_emb.0.0.weight"
    assert mapping["down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight"] == \
        "input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight"
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    back = convert_ldm_unet_checkpoint({keys.LDM_UNET + v: state[k] for k, v in mapping.items()}, dict(unet.config))
    assert set(back) == set(state)


def test_an_sdxl_adapter_on_sd15_is_refused_naming_the_first_misfit(tmp_path):
    from comfy_support import random_lorad
    path = random_lorad(tmp_path / "sdxl.safetensors", family="sdxl")
    sd15 = build_on_meta("sd15")
    with pytest.raises(AdapterError, match=r"trained for 'sdxl' but the model is 'sd15' \(the first misfit: "
                                           r"'lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k' has up \(640, 4\) / "
                                           r"down \(4, 1024\) but layer .* \(640, 768\)"):
        lorad.load_adapter(sd15, path)
    assert not lorad.adapter_names(sd15)


def test_incomplete_or_wrong_sdxl_folders_are_named(tmp_path):
    import json
    import shutil

    from wadi_core.models import ModelFolderError
    folder = write_sdxl_folder(tmp_path / "sdxl")
    config = folder / "unet" / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items()
                                  if k != "addition_embed_type"}))
    with pytest.raises(ModelFolderError, match="takes no pooled text embedding and time ids.*not an SDXL model"):
        load_components(folder)
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(ModelFolderError, match="SDXL folder .* is incomplete: .*tokenizer_2 is missing"):
        load_components(folder)


def test_wadi_eval_scores_the_one_step_images_of_an_sdxl_teacher(sdxl, tmp_path):
    import json

    from wadi_cli.cli import main
    folder, _, _ = sdxl
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n" * 3)
    out = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(folder), "--prompts", str(prompts), "--one-step", "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads(out.read_text())["model_result"]
    assert result["images_per_second"] > 0 and result["fid"] >= 0
    assert result["prompt_accuracy"]["judged"] == 9
