"""The node pack inside a real ComfyUI (in this process, CPU): LoRaD patches equal wadi_core's merge,
the stock LoraLoader reads LoRaD files, one-step sampling equals wadi_core.sampling.onestep, bad files fail
clearly. The server end to end is in test_comfy_server.py."""

from __future__ import annotations

import pytest
import torch

from comfy_support import import_comfy_in_process, random_lorad
from wadi_core.models import keys
from wadi_core.lorad.io import AdapterError, read_adapter
from wadi_core.merge import plan_merge

pytestmark = pytest.mark.slow  # a real ComfyUI (a server, or in this process): minutes

TOLERANCE_WEIGHTS = 1e-5


@pytest.fixture(scope="module")
def host(tmp_path_factory, sd15_random):
    models = tmp_path_factory.mktemp("comfy-models")
    folder_paths = import_comfy_in_process(models)
    ckpt = sd15_random["checkpoint"]
    for name in ("student", "style"):
        (models / "loras" / f"{name}.safetensors").symlink_to(sd15_random[name])
    (models / "checkpoints" / "sd15-random.safetensors").symlink_to(ckpt)
    import comfy.model_management
    import comfy.sd
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True, output_clip=True)
    import wadi_comfy
    wadi_comfy.register_with_comfy()
    yield dict(folder_paths=folder_paths, models=models, ckpt=ckpt, model=model, clip=clip, vae=vae)
    comfy.model_management.unload_all_models()  # free the 4 GB before the server tests load their own copy


def patched_weights(patcher) -> dict[str, torch.Tensor]:
    """The UNet weights with the patcher's patches applied (then unapplied again)."""
    patcher.patch_model(force_patch_weights=True)
    try:
        return {k: v.detach().float().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
    finally:
        patcher.unpatch_model()


def wadi_merged(ckpt, adapters) -> dict[str, torch.Tensor]:
    """wadi_core's merge of the same adapters, under the LDM names ComfyUI uses."""
    from wadi_core.lorad import functional as LF
    plan = plan_merge(ckpt, adapters)
    out = {}
    for layer in plan.layers:
        _, stored = plan.checkpoint.stored[layer + ".weight"]
        weight = plan.checkpoint.read(layer + ".weight").float()
        out[stored[len(keys.LDM_UNET):]] = LF.rotate_by_angles(weight, plan.theta(layer))
    return out


def max_error(got: dict, want: dict) -> float:
    return max((got[k] - v).abs().max().item() for k, v in want.items())


def test_model_sd15_is_detected_and_the_pack_registers(host):
    import comfy.weight_adapter
    from wadi_comfy.adapter import adapter_class
    assert type(host["model"].model).__name__ == "BaseModel"
    assert host["model"].model.model_config.__class__.__name__ == "SD15"
    assert adapter_class() in comfy.weight_adapter.adapters


def test_our_loader_patches_equal_wadi_merge_and_leave_the_input_alone(host):
    from wadi_comfy.nodes import WaDiLoadLoRaD
    model = host["model"]
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    (patched,) = WaDiLoadLoRaD().load(model, "student.safetensors", 0.7)
    want = wadi_merged(host["ckpt"], [(host["models"] / "loras" / "student.safetensors", 0.7)])
    got = patched_weights(patched)
    assert len(want) > 100 and max_error(got, want) <= TOLERANCE_WEIGHTS
    assert not model.patches  # the input MODEL is never mutated
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_two_loaders_stack_and_strength_zero_is_exact(host):
    from wadi_comfy.nodes import WaDiLoadLoRaD
    loader = WaDiLoadLoRaD()
    (one,) = loader.load(host["model"], "student.safetensors", 1.0)
    (two,) = loader.load(one, "style.safetensors", -0.5)
    loras = host["models"] / "loras"
    want = wadi_merged(host["ckpt"], [(loras / "student.safetensors", 1.0), (loras / "style.safetensors", -0.5)])
    assert max_error(patched_weights(two), want) <= TOLERANCE_WEIGHTS
    (zero,) = loader.load(host["model"], "student.safetensors", 0.0)
    plain = patched_weights(host["model"])
    assert all(torch.equal(v, plain[k]) for k, v in patched_weights(zero).items())


def test_stock_lora_loader_reads_lorad_files_like_our_loader(host):
    import comfy.sd
    import comfy.utils
    from wadi_comfy.nodes import WaDiLoadLoRaD
    path = host["models"] / "loras" / "student.safetensors"
    stock, _ = comfy.sd.load_lora_for_models(host["model"], host["clip"], comfy.utils.load_torch_file(str(path)),
                                             0.7, 0.0)
    (ours,) = WaDiLoadLoRaD().load(host["model"], "student.safetensors", 0.7)
    assert len(stock.patches) == len(ours.patches) > 100
    got, want = patched_weights(stock), patched_weights(ours)
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= TOLERANCE_WEIGHTS


def test_bad_files_are_refused_before_anything_is_patched(host, tmp_path):
    from safetensors.torch import save_file

    from wadi_comfy.nodes import WaDiLoadLoRaD
    loras = host["models"] / "loras"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320)},
              str(loras / "plain-lora.safetensors"))
    (loras / "truncated.safetensors").write_bytes((loras / "student.safetensors").read_bytes()[:5000])
    # an adapter for SD2.1 (cross-attention 1024 wide) on this SD1.5
    sd21 = read_adapter(random_lorad(tmp_path / "x.safetensors"))
    layers = {k: (up, torch.zeros(up.shape[1], 512)) if "attn2_to_k" in k else (up, down)
              for k, (up, down) in sd21.layers.items()}
    from wadi_core import fileio
    fileio.save_safetensors({**{f"{k}.lorad_up": u for k, (u, d) in layers.items()},
                             **{f"{k}.lorad_down": d for k, (u, d) in layers.items()}},
                            loras / "sd21.safetensors", {"wadi.format": "lorad", "wadi.base": "sd21"})
    loader = WaDiLoadLoRaD()
    for name, message in (("plain-lora.safetensors", "LoRA-style file"), ("truncated.safetensors", "truncated"),
                          ("sd21.safetensors", "another base model"), ("missing.safetensors", "loras folder")):
        with pytest.raises((AdapterError, FileNotFoundError), match=message):
            loader.load(host["model"], name, 1.0)
    assert not host["model"].patches


def test_one_step_sampler_equals_wadi_onestep(host):
    """ComfyUI's one-step latent = wadi_core.sampling.onestep.predict_x0 for the same weights, noise and conditioning."""
    import comfy.sample
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from wadi_comfy.nodes import WaDiLoadLoRaD, WaDiOneStepSampler
    from wadi_core.models.families import sd15_unet
    from wadi_core.lorad import load_adapter
    from wadi_core.models import open_checkpoint
    from wadi_core.sampling.onestep import predict_x0

    (patched,) = WaDiLoadLoRaD().load(host["model"], "student.safetensors", 1.0)
    positive = host["clip"].encode_from_tokens_scheduled(host["clip"].tokenize("a red circle"))
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (result,) = WaDiOneStepSampler().sample(patched, positive, latent, seed=3)

    ckpt = open_checkpoint(host["ckpt"])
    with torch.device("meta"):
        unet: UNet2DConditionModel = sd15_unet()
    unet.load_state_dict({name: ckpt.read(name).float() for name in ckpt.stored}, assign=True)
    load_adapter(unet.eval(), host["models"] / "loras" / "student.safetensors")
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    noise = comfy.sample.prepare_noise(latent["samples"], 3)
    with torch.no_grad():
        x0 = predict_x0(unet, scheduler, noise, positive[0][0])
    # ComfyUI's LATENT is the VAE latent; the diffusion space is scaled by SD's 0.18215
    got = result["samples"] * 0.18215
    assert x0.abs().mean() > 0.1  # a real prediction, not two zeros
    # two UNet implementations in fp32; the x0 formula multiplies eps errors by sqrt(1/abar_999 - 1) = 14.6
    assert torch.allclose(got, x0, atol=2e-3, rtol=1e-3), (got - x0).abs().max()


def test_v3_entrypoint_offers_the_same_nodes(host):
    import asyncio

    from wadi_comfy.nodes import NODE_CLASS_MAPPINGS, WaDiOneStepSigmas
    from wadi_comfy.v3 import comfy_entrypoint
    nodes = asyncio.run(asyncio.run(comfy_entrypoint()).get_node_list())
    schemas = {node.GET_SCHEMA().node_id: node for node in nodes}
    assert set(schemas) == set(NODE_CLASS_MAPPINGS)
    loader = schemas["WaDiLoadLoRaD"].GET_SCHEMA()
    assert [i.id for i in loader.inputs] == ["model", "adapter_name", "strength", "adapter_file"]
    assert loader.inputs[-1].optional and loader.inputs[-1].force_input
    v3 = schemas["WaDiOneStepSigmas"].execute(model=host["model"]).args[0]
    assert torch.equal(v3, WaDiOneStepSigmas().sigmas(host["model"])[0])


def test_export_lora_node_writes_a_lora_the_stock_loader_reads(host):
    import comfy.sd
    import comfy.utils

    from wadi_comfy.nodes import WaDiExportLoRA
    report = WaDiExportLoRA().export("sd15-random.safetensors", "student.safetensors", 4, "exported")
    text = report["result"][0]
    assert "relative error" in text
    lora = comfy.utils.load_torch_file(str(host["models"] / "loras" / "exported.safetensors"))
    model, _ = comfy.sd.load_lora_for_models(host["model"], None, lora, 1.0, 0.0)
    assert len(model.patches) > 100  # every layer of the adapter, as an ordinary LoRA


def test_train_node_trains_a_lorad_that_the_loader_reloads(host, monkeypatch):
    """WaDi Train LoRaD through ComfyUI's TrainSampler, as upstream trains today (the model-management training
    flag set while it runs, the training model not handed on): the saved file, loaded by WaDi Load LoRaD, gives
    the output model's one-step latent; the input MODEL stays untouched; bad latents are named."""
    import comfy.model_management
    import comfy_extras.nodes_train

    from wadi_comfy.nodes import WaDiLoadLoRaD, WaDiOneStepSampler, WaDiTrainLoRaD
    flags, sample = [], comfy_extras.nodes_train.TrainSampler.sample

    def recording(self, *args, **kwargs):
        flags.append(getattr(comfy.model_management, "in_training", None))
        return sample(self, *args, **kwargs)
    monkeypatch.setattr(comfy_extras.nodes_train.TrainSampler, "sample", recording)

    model, clip = host["model"], host["clip"]

    def encode(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))
    gen = torch.Generator().manual_seed(0)
    instance = {"samples": torch.randn(2, 4, 8, 8, generator=gen)}
    classes = {"samples": torch.randn(2, 4, 8, 8, generator=gen)}
    out = WaDiTrainLoRaD().train(model, instance, encode("a photo of sks dog"), steps=2, learning_rate=0.05, rank=2,
                                 batch_size=2, seed=0, filename_prefix="db-test", class_latents=classes,
                                 class_conditioning=encode("a photo of a dog"))
    trained, name = out["result"]
    assert name == "db-test.safetensors" and "saved db-test.safetensors" in out["ui"]["text"][0]
    adapter = read_adapter(host["models"] / "loras" / name)
    assert adapter.rank == 2 and len(adapter.layers) > 100 and adapter.family == "sd15"
    assert not model.patches and not getattr(model, "weight_wrapper_patches", {})
    assert flags == [True] and not comfy.model_management.in_training
    assert not getattr(trained, "weight_wrapper_patches", {}) and len(trained.patches) == len(adapter.layers)
    (reloaded,) = WaDiLoadLoRaD().load(model, name, 1.0)
    prompt, latent = encode("a photo of sks dog"), {"samples": torch.zeros(1, 4, 8, 8)}
    results = [WaDiOneStepSampler().sample(m, prompt, latent, 5)[0]["samples"] for m in (model, trained, reloaded)]
    plain, got, want = results
    assert (got - plain).abs().max() > 1e-3  # training changed the model
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3), (got - want).abs().max()
    with pytest.raises(ValueError, match="needs both class latents and the class prompt"):
        WaDiTrainLoRaD().train(model, instance, prompt, 1, 0.01, 2, 1, 0, "x", class_latents=classes)
    with pytest.raises(ValueError, match="differ in size"):
        WaDiTrainLoRaD().train(model, instance, prompt, 1, 0.01, 2, 1, 0, "x",
                               class_latents={"samples": torch.zeros(1, 4, 16, 16)}, class_conditioning=prompt)


def test_a_single_file_sd15_checkpoint_loads_as_a_teacher(host, tmp_path, monkeypatch):
    """wadi's commands take the single file ComfyUI loads: same UNet weights, CLIP and VAE read from the LDM
    layout, the tokenizer from a folder beside it; then one-step generation runs on it."""
    import numpy as np
    from safetensors import safe_open

    from wadi_core.models import CheckpointError, load_components, open_checkpoint
    from wadi_core.models.vae import decode
    from wadi_core.sampling import onestep
    from wadi_core.sampling.latents import latent_shape
    from wadi_core.shapes.components import write_tokenizer

    single = tmp_path / "sd15.safetensors"
    single.symlink_to(host["ckpt"])
    monkeypatch.setattr("wadi_core.models.single_file.CLIP_REPO", "wadi-tests/not-in-any-cache")  # as on a fresh machine
    monkeypatch.setattr("wadi_core.models.single_file.TOKENIZER_FOLDERS", [])  # nor a host's copy
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        load_components(single)
    from wadi_comfy.distill_node import use_comfy_vocabulary
    use_comfy_vocabulary()  # what WaDi Distill does: ComfyUI's own copy of CLIP's vocabulary
    from_comfy = load_components(single).tokenizer
    prompt = "a photo of sks dog"
    comfy_tokens = [token for token, _ in host["clip"].tokenize(prompt)["l"][0]]
    assert from_comfy.model_max_length == 77  # (ComfyUI's folder says 8192)
    assert from_comfy(prompt, padding="max_length", max_length=77).input_ids == comfy_tokens
    write_tokenizer(tmp_path / "tokenizer")  # any CLIP tokenizer whose ids fit CLIP-L's 49408; beside comes first
    model = load_components(single)
    assert len(model.tokenizer) < len(from_comfy)
    ckpt = open_checkpoint(single)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(model.unet.state_dict()[name], ckpt.read(name).float())
    assert torch.equal(model.vae.state_dict()["decoder.mid_block.attentions.0.to_q.weight"],
                       ckpt_tensor(single, "first_stage_model.decoder.mid.attn_1.q.weight").float()[:, :, 0, 0])
    half = load_components(single, unet_dtype=torch.bfloat16)  # as the distiller reads it under bf16
    full = model.unet.state_dict()
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, full[k].to(v.dtype))
               for k, v in half.unet.state_dict().items())
    assert {p.dtype for p in half.text_encoder.parameters()} == {torch.float32}
    del half, full
    text = {k.removeprefix("text_model."): v for k, v in model.text_encoder.state_dict().items()}
    with safe_open(str(single), framework="pt") as f:  # every CLIP weight is the file's (none left as initialised)
        assert all(torch.equal(v, f.get_tensor(f"cond_stage_model.transformer.text_model.{k}").float())
                   for k, v in text.items() if not k.endswith("position_ids"))
    positions = [v for k, v in model.text_encoder.named_buffers() if k.endswith("position_ids")]
    assert len(positions) == 1 and torch.equal(positions[0], torch.arange(77)[None])
    assert latent_shape(model) == (4, 64, 64)  # wadi draws at the file's 512 px; here at 64 px, 16 times cheaper
    with torch.no_grad():
        x0 = onestep.predict_x0(model.unet, model.scheduler, torch.randn(1, 4, 8, 8),
                                model.encode_prompts(["a red circle"]))
        image = decode(model, x0)
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all() and image.std() > 0
    # --export-merged of a single-file teacher to a .safetensors writes a single file with the student baked in
    from wadi_core.merge import export_merged
    merged = tmp_path / "merged.safetensors"
    assert export_merged(str(single), host["models"] / "loras" / "student.safetensors", merged) == merged
    student_layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert not torch.equal(open_checkpoint(merged).read(student_layer), ckpt.read(student_layer))


def ckpt_tensor(path, key):
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def test_a_single_file_missing_a_weight_is_refused_in_one_line(host, tmp_path, capsys):
    """A single file whose VAE lacks one weight (its name changed in the header, the data left as it is): one line
    naming the weight, exit 2, nothing written."""
    import json
    import shutil

    from wadi_cli.cli import main
    from wadi_core.models import CheckpointError, load_components
    from wadi_core.shapes.components import write_tokenizer

    broken = tmp_path / "sd15-broken.safetensors"
    gone = "first_stage_model.decoder.conv_out.bias"
    with open(host["ckpt"], "rb") as src, open(broken, "wb") as dst:
        size = int.from_bytes(src.read(8), "little")
        header = src.read(size)
        assert json.loads(header)[gone]
        dst.write(size.to_bytes(8, "little") + header.replace(gone.encode(), gone.replace("model", "modeX").encode()))
        shutil.copyfileobj(src, dst)
    write_tokenizer(tmp_path / "tokenizer")
    with pytest.raises(CheckpointError, match=r"not a complete SD1.x checkpoint: the VAE weight 'decoder.conv_out."):
        load_components(broken, unet_dtype=torch.bfloat16)
    assert main(["generate", "--model", str(broken), "--prompt", "a red circle", "--one-step",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "decoder.conv_out.bias" in err, err
    assert not (tmp_path / "out").exists()


def test_an_sdxl_lorad_file_covers_comfys_own_sdxl_model(host, tmp_path):
    """ComfyUI's detector reads our LDM names of SDXL's UNet (built on the meta device, no weights) as SDXL, and
    both the stock loader and ours find a layer of that model for every key of an SDXL LoRaD file."""
    from types import SimpleNamespace

    import comfy.lora
    import comfy.model_detection
    import comfy.utils

    from wadi_comfy.patching import lorad_patches
    from wadi_core.models.families import build_on_meta

    state = build_on_meta("sdxl").state_dict()
    ldm = {keys.LDM_UNET + v: state[k] for k, v in keys.unet_name_map(state).items()}
    config = comfy.model_detection.model_config_from_unet(ldm, keys.LDM_UNET)
    assert type(config).__name__ == "SDXL"
    model = config.get_model(ldm, keys.LDM_UNET, device=torch.device("meta"))
    path = random_lorad(tmp_path / "sdxl.safetensors", family="sdxl")
    adapter = read_adapter(path)
    assert len(adapter.layers) == 739
    stock = comfy.lora.load_lora(comfy.utils.load_torch_file(str(path)), comfy.lora.model_lora_keys_unet(model, {}))
    ours, _ = lorad_patches(SimpleNamespace(model=model), adapter, 1.0)
    assert set(stock) == set(ours) and len(ours) == 739


def test_one_step_sampler_on_a_v_prediction_model_equals_wadi_onestep(host):
    """A v-prediction SD2.1 UNet (random weights; ComfyUI reads "v" from one norm's spread, as for SD2.1-768):
    ComfyUI's one-step latent through our sampler = wadi's x0 = sqrt(abar) z - sqrt(1 - abar) v at t = 999."""
    import comfy.model_base
    import comfy.sample
    import comfy.sd
    from diffusers import DDPMScheduler

    from wadi_comfy.nodes import WaDiOneStepSampler
    from wadi_core.models.families import sd21_unet
    from wadi_core.sampling.onestep import predict_x0

    torch.manual_seed(0)
    unet = sd21_unet().eval()
    with torch.no_grad():
        unet.up_blocks[3].attentions[2].transformer_blocks[0].norm1.bias.normal_(0, 0.2)
    state = unet.state_dict()
    patcher = comfy.sd.load_diffusion_model_state_dict({v: state[k] for k, v in keys.unet_name_map(state).items()})
    assert patcher.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    text = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(1))
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (result,) = WaDiOneStepSampler().sample(patcher, [[text, {}]], latent, seed=3)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              prediction_type="v_prediction")
    noise = comfy.sample.prepare_noise(latent["samples"], 3)
    with torch.no_grad():
        x0 = predict_x0(unet, scheduler, noise, text)
    got = result["samples"] * 0.18215  # ComfyUI's LATENT is the VAE latent
    assert x0.abs().mean() > 0.1
    assert torch.allclose(got, x0, atol=2e-3, rtol=1e-3), (got - x0).abs().max()
