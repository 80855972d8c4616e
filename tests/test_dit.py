"""The DiT path: PixArt-style transformer, dit-* presets, lora_transformer_ keys, merge of a folder."""

import pytest
import torch

from training.cli import main
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
