"""The DiT path: PixArt-style transformer, dit-* presets, lora_transformer_ keys, merge of a folder."""

import pytest
import torch

from wadi_cli.cli import main
from wadi_core import lorad
from wadi_core.lorad.io import AdapterError, read_adapter

from conftest import randomize


def tiny_pixart(seed=0):
    from diffusers import PixArtTransformer2DModel
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=2, cross_attention_dim=16, sample_size=8, patch_size=2,
                                    caption_channels=12, norm_type="ada_norm_single",
                                    use_additional_conditions=False, attention_bias=True).eval()


def run(model):
    torch.manual_seed(5)
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 12)
    with torch.no_grad():
        return model(x, encoder_hidden_states=ctx, timestep=torch.tensor([10])).sample


def test_dit_presets_and_round_trip(tmp_path):
    model = tiny_pixart()
    names = lorad.attach(model, rank=4, preset="dit-student")
    assert names and not any("adaln_single" in n for n in names)
    fake = [n for n, _ in lorad.select_targets(tiny_pixart(), preset="dit-fake")]
    assert fake and all(n.startswith("transformer_blocks.") for n in fake)
    randomize(lorad.trainable_parameters(model), std=0.3)
    want = run(model)
    path = lorad.save_adapter(model, tmp_path / "dit.safetensors", preset="dit-student")
    assert all(k.startswith("lora_transformer_") for k in read_adapter(path).layers)
    fresh = tiny_pixart()
    lorad.load_adapter(fresh, path)
    assert torch.equal(run(fresh), want)

    tiny_pixart().save_pretrained(tmp_path / "pixart" / "transformer")
    (tmp_path / "pixart" / "model_index.json").write_text('{"_class_name": "PixArtAlphaPipeline"}')
    out = tmp_path / "merged"
    assert main(["merge", "--base", str(tmp_path / "pixart"), "--adapter", str(path), "--out", str(out),
                 "--quiet"]) == 0
    from diffusers import PixArtTransformer2DModel
    assert torch.allclose(run(PixArtTransformer2DModel.from_pretrained(out / "transformer")), want, atol=1e-5)


def test_unet_adapter_on_a_dit_is_refused(tmp_path):
    from conftest import tiny_unet
    unet = tiny_unet()
    lorad.attach(unet, rank=2, preset="unet-student")
    path = lorad.save_adapter(unet, tmp_path / "u.safetensors")
    with pytest.raises(AdapterError, match="it is for a UNet backbone"):
        lorad.load_adapter(tiny_pixart(), path)


def test_analyze_a_dit_and_its_lorad_student(tmp_path):
    """``wadi analyze`` on a DiT: a model folder plus a LoRaD adapter applied while it is read."""
    import json

    tiny_pixart().save_pretrained(tmp_path / "dit")
    model = tiny_pixart()
    lorad.attach(model, rank=4, preset="dit-student")
    randomize(lorad.trainable_parameters(model), std=0.3)
    adapter = lorad.save_adapter(model, tmp_path / "dit.safetensors", preset="dit-student")
    out = tmp_path / "analysis"
    assert main(["analyze", str(tmp_path / "dit"), str(adapter), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "analysis.json").read_text())
    summary = report["summary"]
    assert 0 < summary["changed_layers"] < summary["layers"] and summary["norm_change_mean"] < 1e-6
    assert summary["direction_change_mean"] > 0 and "DiT" in report["swap"]["note"]


def tiny_pixart_folder(folder):
    """A PixArt-style pipeline folder at toy size: tiny DiT and T5, the shapes world's VAE, tokenizer and schedule."""
    import json
    import shutil

    from transformers import T5Config, T5EncoderModel

    from wadi_core.shapes.components import MODEL_DIR, write_tokenizer
    write_tokenizer(folder / "tokenizer")
    T5EncoderModel(T5Config(vocab_size=176, d_model=12, d_kv=4, d_ff=24, num_layers=1, num_heads=2)).save_pretrained(
        folder / "text_encoder")
    for part in ("vae", "scheduler"):
        shutil.copytree(MODEL_DIR / part, folder / part)
    tiny_pixart().save_pretrained(folder / "transformer")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    return folder


def test_distill_a_dit_teacher_resume_generate_and_export(tmp_path):
    """wadi distill on a PixArt-style teacher: dit-* presets, lora_transformer keys, exact resume, one-step
    generation with the adapter, and a merged folder that diffusers' PixArt class loads."""
    import numpy as np
    from diffusers import PixArtTransformer2DModel
    from safetensors.torch import load_file

    from wadi_core import students
    from wadi_core.sampling import onestep
    from wadi_core.models import load_components

    teacher = tiny_pixart_folder(tmp_path / "pixart")
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\na green triangle\n")
    common = ["--teacher", str(teacher), "--prompts", str(tmp_path / "prompts.txt"), "--student-rank", "2",
              "--fake-rank", "2", "--batch-size", "2", "--lr-student", "1e-2", "--checkpoint-every", "2",
              "--sample-every", "10", "--report-to", "none", "--quiet"]
    assert main(["distill", "--out", str(tmp_path / "a"), "--steps", "4"] + common) == 0
    assert main(["distill", "--out", str(tmp_path / "b"), "--steps", "2"] + common) == 0
    assert main(["distill", "--out", str(tmp_path / "b"), "--steps", "4", "--resume",
                 "--export-merged", str(tmp_path / "merged")] + common) == 0
    a, b = (load_file(str(tmp_path / run / "student.safetensors")) for run in ("a", "b"))
    assert a.keys() == b.keys() and all(k.startswith("lora_transformer_") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resumed run retraces the uninterrupted one
    assert students.read_spec(tmp_path / "a" / "student.safetensors").preset == "dit-student"

    model = load_components(teacher)
    students.apply_adapter_file(model.unet, tmp_path / "a" / "student.safetensors")
    with_adapter = onestep.generate(model, ["a red circle"], [1], progress=False)
    merged = load_components(tmp_path / "merged")
    assert type(PixArtTransformer2DModel.from_pretrained(str(tmp_path / "merged" / "transformer"))).__name__ == \
        "PixArtTransformer2DModel"
    baked = onestep.generate(merged, ["a red circle"], [1], progress=False)
    assert np.abs(with_adapter.astype(int) - baked.astype(int)).max() <= 2
    assert main(["generate", "--model", str(teacher), "--prompt", "a red circle", "--steps", "3",
                 "--out", str(tmp_path / "gen"), "--quiet"]) == 0


def test_gan_head_reads_the_middle_transformer_block_of_a_dit():
    from wadi_core.distill import gan
    model = tiny_pixart()
    tap = gan.FeatureTap(model)
    with tap.capture():
        run(model)
    channels = gan.feature_channels(model)
    assert channels == 16 and tap.features.shape == (1, 16, channels)  # 4x4 patches of 2x2 on an 8x8 latent
    assert gan.reads_tokens(model) and gan.DiscriminatorHead(channels, tokens=True)(tap.features).shape == (1,)


def test_extract_recovers_a_rotated_pixart_transformer(tmp_path):
    """The authors' rotated_transformer.safetensors, at toy size: every dit-student Linear rotated by rank-2 angles,
    saved as the whole transformer's state dict; ``wadi extract`` gives an adapter whose merge equals it."""
    import math

    from safetensors.torch import save_file

    from wadi_core.lorad import functional as LF

    tiny_pixart().save_pretrained(tmp_path / "pixart" / "transformer")
    (tmp_path / "pixart" / "model_index.json").write_text('{"_class_name": "PixArtAlphaPipeline"}')
    model, g = tiny_pixart(), torch.Generator().manual_seed(4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, module in lorad.select_targets(model, preset="dit-student"):
        out_f, half = module.weight.shape[0], module.weight.shape[1] // 2
        theta = torch.randn(out_f, 2, generator=g) @ torch.randn(2, half, generator=g) * 0.3
        state[f"{name}.weight"] = LF.rotate_by_angles(module.weight.detach(), (theta + math.pi) % (2 * math.pi) - math.pi)
    released = tmp_path / "rotated_transformer.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(released))
    adapter = tmp_path / "dit.safetensors"
    assert main(["extract", "--base", str(tmp_path / "pixart"), "--merged", str(released), "--rank", "2",
                 "--out", str(adapter), "--quiet"]) == 0
    assert all(k.startswith("lora_transformer_") for k in read_adapter(adapter).layers)
    fresh = tiny_pixart()
    lorad.load_adapter(fresh, adapter)
    lorad.merge_adapters(fresh)
    lorad.detach(fresh, unmerge=False)
    for name, want in state.items():
        got = fresh.state_dict()[name]
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), name


def test_a_released_transformer_needs_only_the_configuration_of_the_bases(tmp_path):
    """With a replacement transformer file, a PixArt folder's own transformer weights are not read (a download for
    --unet leaves them out): the same model as from the whole folder, its position table built from the config."""
    import shutil

    from safetensors.torch import save_file

    from wadi_core.models import load_components

    whole = tiny_pixart_folder(tmp_path / "pixart")
    lean = tmp_path / "lean"
    shutil.copytree(whole, lean)
    for file in (lean / "transformer").glob("diffusion_pytorch_model*"):
        file.unlink()
    released = tmp_path / "rotated_transformer.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_pixart(seed=1).state_dict().items()}, str(released))
    for dtype in (torch.float32, torch.bfloat16):
        want = load_components(whole, backbone=released, unet_dtype=dtype).unet
        got = load_components(lean, backbone=released, unet_dtype=dtype).unet
        assert {k: v.dtype for k, v in got.state_dict().items()} == {k: v.dtype for k, v in want.state_dict().items()}
        assert all(torch.equal(v, want.state_dict()[k]) for k, v in got.state_dict().items())
        assert torch.equal(run(got.float()), run(want.float()))  # the buffers the file does not hold agree too
