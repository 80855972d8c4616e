"""Single-file checkpoints of SD2.x and SDXL (the .safetensors ComfyUI and A1111 load): read as components, and
written from a diffusers folder by wadi merge.

The readers use each family's full-size configuration; here every full-size weight is checked to have a source
(on the meta device), and tiny models of the same layouts go through a file and back with their values."""

from __future__ import annotations

import pytest
import torch
from conftest import random_student, randomize, tiny_sdxl_unet_config, tiny_vae, write_sdxl_folder
from safetensors.torch import load_file, save_file

from wadi_core.models import keys, load_components, open_checkpoint
from wadi_core.models.families import family_from_weight_shapes
from wadi_core.models.single_file import (FAMILIES, SD_VAE, V_PREDICTION_BIAS, Family, TextPart, _text_sources,
                                          prediction_of, read_single_file)

TINY_OPENCLIP = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                     hidden_act="gelu", projection_dim=16)


def meta_parts(family: Family):
    """A family's full-size VAE, text encoders and UNet on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    with torch.device("meta"):
        texts = [(CLIPTextModelWithProjection if p.projection else CLIPTextModel)(CLIPTextConfig(**p.config))
                 for p in family.texts]
        return texts, AutoencoderKL(**SD_VAE), UNet2DConditionModel(**family.unet)


def written_text(part: TextPart, encoder) -> dict[str, torch.Tensor]:
    """An encoder's tensors under the names wadi merge writes them in a single file."""
    state = encoder.state_dict()
    return keys.add_prefix(keys.openclip_to_ldm(state) if part.openclip else keys.clip_l_to_ldm(state), part.prefix)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_full_size_weight_has_its_source_and_diffusers_agrees(name):
    """For SD1.x, SD2.x and SDXL at full size: each text-encoder weight is read from the tensor our writer puts it in,
    the OpenCLIP ones as diffusers' own reader takes them, and the UNet configuration is the family's."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    family = FAMILIES[name]
    texts, _, unet = meta_parts(family)
    assert family_from_weight_shapes({k: tuple(v.shape) for k, v in unet.state_dict().items()}) == name
    for part, encoder in zip(family.texts, texts):
        written = written_text(part, encoder)
        sources = _text_sources(part, encoder, None, set(written))
        own = {k for k in encoder.state_dict() if not k.endswith("position_ids")}
        assert set(sources) == own and {where[1] for where in sources.where.values()} == set(written)
        if part.openclip:
            theirs = convert_open_clip_checkpoint(encoder, written, prefix=part.prefix)
            assert {k.removeprefix("text_model.") for k in theirs} == {k.removeprefix("text_model.") for k in own}
    assert len(family.texts) == (2 if name == "sdxl" else 1)
    assert [p.pad_token for p in family.texts] == {"sd15": ["<|endoftext|>"], "sd21": ["!"],
                                                   "sdxl": ["<|endoftext|>", "!"]}[name]


def test_openclip_names_read_back_what_was_written():
    """q, k and v come back from their thirds of in_proj, the projection from its transpose: the values, not only the
    names, and diffusers' reader takes the same values from the same file."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    encoder = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_OPENCLIP)).eval()
    randomize(encoder.parameters())
    part = TextPart(keys.LDM_SDXL_CLIP_G, TINY_OPENCLIP, True, "!", projection=True)
    written = written_text(part, encoder)
    sources = _text_sources(part, encoder, None, set(written))
    own = {k: v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}
    for name, (_, key, convert) in sources.where.items():
        got = convert(written[key]) if convert else written[key]
        assert torch.equal(got, own[name]), name
    theirs = convert_open_clip_checkpoint(encoder, written, prefix=part.prefix)
    assert set(theirs) == set(own) and all(torch.equal(theirs[k], own[k]) for k in own)


def tiny_sd2_folder(root):
    """An SD2.x layout in miniature: OpenCLIP's text encoder (GELU, "!" padding), linear projections in the UNet."""
    from conftest import tiny_unet_config
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from wadi_core.shapes import components as C

    tokenizer = CLIPTokenizer.from_pretrained(str(C.write_tokenizer(root.parent / "sd2-tokenizer")), pad_token="!")
    torch.manual_seed(0)
    config = C.text_encoder_config(len(tokenizer))  # the world's vocabulary and end token
    for key, value in TINY_OPENCLIP.items():
        setattr(config, key, value)
    text = CLIPTextModel(config).eval()
    unet = UNet2DConditionModel(**tiny_unet_config(), use_linear_projection=True)
    randomize(unet.parameters(), std=0.05)
    scheduler = DDPMScheduler.from_config(C.SCHEDULER_CONFIG)
    C.save_model_folder(C.Components(tokenizer, text, tiny_vae(), unet.eval(), scheduler), root,
                        unet_dtype=torch.float32)
    return root


def tiny_family(family: Family, folder, unet_config: dict) -> Family:
    """``family`` with the tiny folder's configurations in place of the full-size ones."""
    import json
    texts = []
    for part, sub in zip(family.texts, ("text_encoder", "text_encoder_2")):
        config = json.loads((folder / sub / "config.json").read_text())
        keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings", "hidden_act", "projection_dim", "bos_token_id", "eos_token_id")
        texts.append(TextPart(part.prefix, {k: config[k] for k in keep}, part.openclip, part.pad_token,
                              part.projection))
    unet_config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    scaling = json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"]
    return Family(family.label, unet_config, tuple(texts), scaling,
                  family.v_sample_size and unet_config["sample_size"] * 3 // 2, family.guess_v)


def tiny_vae_config(folder) -> dict:
    import json
    config = json.loads((folder / "vae" / "config.json").read_text())
    return {k: config[k] for k in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                                   "latent_channels", "norm_num_groups", "sample_size")}


def read_back(path, family, folder, monkeypatch):
    monkeypatch.setattr("wadi_core.models.single_file.SD_VAE", tiny_vae_config(folder))
    return read_single_file(open_checkpoint(path), family)


def assert_same_weights(got, want):
    got, want = got.state_dict(), want.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k].to(got[k].dtype)) for k in want), next(
        k for k in want if not torch.equal(got[k], want[k].to(got[k].dtype)))


def test_an_sd2_folder_merges_into_a_single_file_that_reads_back(tmp_path, monkeypatch):
    """wadi merge writes an SD2.x folder as one .safetensors: the text encoder under cond_stage_model.model. in
    OpenCLIP's names (diffusers' reader gets the folder's weights back from it), and wadi reads the file as the
    folder's components with the student merged: the same prompt embedding ("!" padding), VAE and UNet."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    from wadi_core.merge import _rotated_backbone, merge_checkpoint, plan_merge
    from wadi_core.shapes.components import write_tokenizer

    folder = tiny_sd2_folder(tmp_path / "sd2")
    (tmp_path / "files").mkdir()
    base = load_components(folder)
    adapter = random_student(base.unet, tmp_path / "student.safetensors")
    single = merge_checkpoint(folder, [(adapter, 1.0)], tmp_path / "files" / "sd2.safetensors", progress=False)
    state = load_file(str(single))
    assert not any(k.startswith(keys.LDM_CLIP) for k in state)
    theirs = {k.removeprefix("text_model."): v
              for k, v in convert_open_clip_checkpoint(base.text_encoder, state, prefix=keys.LDM_SD2_CLIP).items()}
    own = {k.removeprefix("text_model."): v for k, v in base.text_encoder.state_dict().items()
           if not k.endswith("position_ids")}
    assert set(theirs) == set(own) and all(torch.equal(theirs[k], own[k]) for k in own)

    write_tokenizer(single.parent / "tokenizer")  # the vocabulary; the reader gives it SD2's "!" padding
    family = tiny_family(FAMILIES["sd21"], folder, dict(base.unet.config))
    got = read_back(single, family, folder, monkeypatch)
    prompts = ["a red circle", "two blue squares on green"]
    assert got.tokenizer.pad_token == "!" and torch.equal(got.encode_prompts(prompts), base.encode_prompts(prompts))
    assert_same_weights(got.vae, base.vae)
    merged = _rotated_backbone(plan_merge(folder, [(adapter, 1.0)]), progress=False)
    assert set(got.unet.state_dict()) == set(merged)
    assert all(torch.equal(v, merged[k]) for k, v in got.unet.state_dict().items())
    assert got.scheduler.config.prediction_type == "epsilon" and got.unet.config.sample_size == 16

    # v-prediction, as A1111 is told it (a .yaml of the same name) and as ComfyUI marks it (a v_pred tensor)
    single.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    v = read_back(single, family, folder, monkeypatch)
    assert v.scheduler.config.prediction_type == "v_prediction" and v.unet.config.sample_size == 24
    single.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert read_back(single, family, folder, monkeypatch).scheduler.config.prediction_type == "epsilon"
    single.with_suffix(".yaml").unlink()
    save_file({**state, "v_pred": torch.zeros(())}, str(tmp_path / "files" / "sd2-v.safetensors"))
    v = read_back(tmp_path / "files" / "sd2-v.safetensors", family, folder, monkeypatch)
    assert v.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("spread, want", [(0.2, "v_prediction"), (0.02, "epsilon")])
def test_an_sd2_file_without_a_yaml_is_told_by_its_layer_norm(tmp_path, spread, want):
    path = tmp_path / "sd2.safetensors"
    save_file({V_PREDICTION_BIAS: torch.randn(1280, generator=torch.Generator().manual_seed(0)) * spread},
              str(path))
    assert prediction_of(path, {V_PREDICTION_BIAS}, FAMILIES["sd21"]) == want
    assert prediction_of(path, {V_PREDICTION_BIAS}, FAMILIES["sd15"]) == "epsilon"  # the test is SD2's alone


def test_an_sdxl_single_file_reads_as_the_folder_it_was_written_from(tmp_path, monkeypatch):
    """An SDXL folder merged into one file and read back: the packed text (both encoders' hidden states and the
    pooled embedding through the transposed projection, the second tokenizer padding with "!"), VAE, UNet and the
    one-step images equal the folder's with the student."""
    from transformers import CLIPTokenizer

    from wadi_core.merge import merge_checkpoint
    from wadi_core.sampling import onestep
    from wadi_core.shapes.components import write_tokenizer

    folder = write_sdxl_folder(tmp_path / "sdxl")
    (tmp_path / "files").mkdir()
    CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"), pad_token="!").save_pretrained(folder / "tokenizer_2")
    base = load_components(folder)
    adapter = random_student(base.unet, tmp_path / "student.safetensors")
    single = merge_checkpoint(folder, [(adapter, 1.0)], tmp_path / "files" / "sdxl.safetensors", progress=False)
    write_tokenizer(single.parent / "tokenizer")
    got = read_back(single, tiny_family(FAMILIES["sdxl"], folder, tiny_sdxl_unet_config()), folder, monkeypatch)
    prompts = ["a red circle", "two blue squares on green"]
    assert torch.equal(got.encode_prompts(prompts), base.encode_prompts(prompts))
    assert_same_weights(got.vae, base.vae)
    assert got.unet.vae_scale_factor == base.unet.vae_scale_factor == 2
    want = load_components(folder)
    from wadi_core import students
    students.apply_adapter_file(want.unet, adapter)
    images = [onestep.generate(c, prompts, [0, 1], progress=False, scale=1) for c in (got, want)]
    assert abs(images[0].astype(int) - images[1].astype(int)).max() <= 1


def test_a_family_without_a_single_file_reader_is_named(tmp_path):
    from wadi_core.models import CheckpointError
    path = tmp_path / "odd.safetensors"
    save_file({keys.LDM_UNET + "input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="'unknown' checkpoint; single files are read for SD1.x, SD2.x and SDXL"):
        load_components(path)


def sd15_folder(root):
    from conftest import write_sd_folder
    return write_sd_folder(root)


def sdxl_folder(root):
    from transformers import CLIPTokenizer
    folder = write_sdxl_folder(root)
    CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"), pad_token="!").save_pretrained(folder / "tokenizer_2")
    return folder


@pytest.mark.parametrize("name, make_folder", [("sd15", sd15_folder), ("sd21", tiny_sd2_folder), ("sdxl", sdxl_folder)])
def test_a_single_file_merges_into_a_pipeline_folder_that_diffusers_runs(name, make_folder, tmp_path, monkeypatch):
    """wadi merge of a single file into a folder writes the whole diffusers pipeline, its text encoders, tokenizers
    and VAE read from the file: a student merged into one file and taken out again gives back the folder it came
    from, and one step of diffusers' own pipeline (its Euler scheduler with trailing timesteps, no guidance) is
    wadi's one-step image of the folder (as it is of a folder base with that scheduler set and the student file
    loaded into diffusers' UNet)."""
    import json

    from diffusers import DiffusionPipeline, EulerDiscreteScheduler

    from wadi_core import lorad, students
    from wadi_core.merge import merge_checkpoint
    from wadi_core.sampling import onestep
    from wadi_core.sampling.latents import initial_latents, latent_shape
    from wadi_core.shapes.components import write_tokenizer

    folder = make_folder(tmp_path / name)
    base = load_components(folder)
    adapter = random_student(base.unet, tmp_path / "student.safetensors")
    (tmp_path / "files").mkdir()
    single = merge_checkpoint(folder, [(adapter, 1.0)], tmp_path / "files" / f"{name}.safetensors", progress=False)
    write_tokenizer(single.parent / "tokenizer")
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    monkeypatch.setitem(FAMILIES, open_checkpoint(single).family, tiny_family(FAMILIES[name], folder, unet_config))
    monkeypatch.setattr("wadi_core.models.single_file.SD_VAE", tiny_vae_config(folder))
    out = merge_checkpoint(single, [(adapter, -1.0)], tmp_path / "out", progress=False)

    got = load_components(out)
    prompts = ["a red circle", "two blue squares on green"]
    assert torch.equal(got.encode_prompts(prompts), base.encode_prompts(prompts))
    assert_same_weights(got.vae, base.vae)
    want = base.unet.state_dict()
    assert all(torch.allclose(v, want[k], atol=1e-5) for k, v in got.unet.state_dict().items())
    assert type(got.unet) is type(base.unet)
    # the authors' route: a released whole UNet (here the base's own) written with the file's other parts
    released = tmp_path / "released.safetensors"
    save_file({k: v.contiguous() for k, v in base.unet.state_dict().items()}, str(released))
    again = load_components(merge_checkpoint(open_checkpoint(single, released), [], tmp_path / "out2",
                                             progress=False))
    assert_same_weights(again.unet, base.unet)
    assert torch.equal(again.encode_prompts(prompts), base.encode_prompts(prompts))
    if name == "sd21":  # a v-prediction file: the folder's scheduler predicts v and its UNet draws 1.5x larger
        single.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
        v = merge_checkpoint(single, [(adapter, -1.0)], tmp_path / "out-v", progress=False)
        pipe = DiffusionPipeline.from_pretrained(str(v))
        assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.unet.config.sample_size == 24
        single.with_suffix(".yaml").unlink()

    pipe = DiffusionPipeline.from_pretrained(str(out))
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if name == "sdxl" else "StableDiffusionPipeline")
    noise = initial_latents([0, 1], latent_shape(got, 1))
    theirs = pipe(prompts, num_inference_steps=1, guidance_scale=0.0, latents=noise, output_type="np").images
    ours = onestep.generate(got, prompts, [0, 1], progress=False)
    assert abs(ours.astype(float) - theirs * 255).max() <= 1.0

    # a folder base keeps its own scheduler; Euler with trailing timesteps from its config makes the same one step,
    # and the student file loads straight into diffusers' UNet (docs/python.md)
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    lorad.load_adapter(pipe.unet, adapter)
    theirs = pipe(prompts, num_inference_steps=1, guidance_scale=0.0, latents=noise, output_type="np").images
    students.apply_adapter_file(base.unet, adapter)
    ours = onestep.generate(base, prompts, [0, 1], progress=False)
    assert abs(ours.astype(float) - theirs * 255).max() <= 1.0
