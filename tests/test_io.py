"""Adapter files: round trip and every bad input, each refused with the model untouched."""


import pytest
import torch
from safetensors.torch import save_file

from wadi_core import lorad
from wadi_core.lorad.io import AdapterError, read_adapter

from conftest import MLP, randomize, tiny_unet


def trained_unet_adapter(tmp_path, name="a.safetensors", rank=4, **unet_kw):
    unet = tiny_unet(**unet_kw)
    lorad.attach(unet, rank=rank, preset="unet-student")
    randomize(lorad.trainable_parameters(unet), std=0.3)
    path = lorad.save_adapter(unet, tmp_path / name, preset="unet-student")
    return unet, path


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_refused(adapter, match):
    """Loading ``adapter`` into a fresh tiny UNet fails with ``match`` and changes nothing."""
    target = tiny_unet()
    before = state(target)
    with pytest.raises(AdapterError, match=match):
        lorad.load_adapter(target, adapter)
    after = target.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert not lorad.adapter_names(target)


def read_tensors(path):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_save_load_round_trip(tmp_path):
    trained, path = trained_unet_adapter(tmp_path)
    sample, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 3, 32)
    with torch.no_grad():
        want = trained(sample, t, ctx).sample
    fresh = tiny_unet()
    file = lorad.load_adapter(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(sample, t, ctx).sample, want)
    assert file.metadata["wadi.format"] == "lorad" and file.rank == 4 and file.preset == "unet-student"
    keys = list(read_adapter(path).layers)
    assert all(k.startswith("lora_unet_") for k in keys)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in keys


def test_loaded_adapter_is_frozen_unless_asked_and_strength_applies(tmp_path):
    trained, path = trained_unet_adapter(tmp_path)
    fresh = tiny_unet()
    lorad.load_adapter(fresh, path, strength=0.0)
    assert not any(p.requires_grad for p in lorad.trainable_parameters(fresh))
    sample, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 3, 32)
    with torch.no_grad():
        assert torch.equal(fresh(sample, t, ctx).sample, tiny_unet()(sample, t, ctx).sample)


def test_adapter_for_another_base_is_refused(tmp_path):
    _, path = trained_unet_adapter(tmp_path, cross_attention_dim=48)
    assert_refused(path, "attn2.to_k.*another base model")


def test_family_mismatch_is_named(tmp_path):
    _, path = trained_unet_adapter(tmp_path)
    file = read_adapter(path)
    file.metadata["wadi.base"] = "sd21"
    fresh = tiny_unet()
    fresh.wadi_family = "sd15"
    with pytest.raises(AdapterError, match="trained for 'sd21' but the model is 'sd15'"):
        lorad.load_adapter(fresh, file)


def test_unknown_key_is_named(tmp_path):
    model = MLP()
    lorad.attach(model, rank=2, targets=["*"])
    path = lorad.save_adapter(model, tmp_path / "mlp.safetensors")
    assert_refused(path, "key 'lora_unet_a' names no layer")


def test_missing_half_of_a_pair(tmp_path):
    _, path = trained_unet_adapter(tmp_path)
    tensors, meta = read_tensors(path)
    dropped = sorted(k for k in tensors if k.endswith(".lorad_down"))[3]
    del tensors[dropped]
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=meta)
    with pytest.raises(AdapterError, match=f"missing key '{dropped}'"):
        read_adapter(tmp_path / "broken.safetensors")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values(tmp_path, bad):
    _, path = trained_unet_adapter(tmp_path)
    tensors, meta = read_tensors(path)
    tensors[sorted(tensors)[0]][0, 0] = bad
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    assert_refused(tmp_path / "nan.safetensors", "NaN or Inf")


def test_truncated_and_non_safetensors_files(tmp_path):
    _, path = trained_unet_adapter(tmp_path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.safetensors").write_text("hello, I am not a tensor file")
    for name in ("cut.safetensors", "text.safetensors"):
        assert_refused(tmp_path / name, "not a readable safetensors file")
    with pytest.raises(AdapterError, match="does not exist"):
        read_adapter(tmp_path / "nope.safetensors")


def test_pickle_is_not_read(tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "adapter.pt")
    with pytest.raises(ValueError, match="pickle"):
        read_adapter(tmp_path / "adapter.pt")


@pytest.mark.parametrize("style", ["kohya", "peft"])
def test_lora_file_passed_as_lorad(tmp_path, style):
    if style == "kohya":
        tensors = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
                   "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                   "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}
    else:
        tensors = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32),
                   "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(32, 4)}
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    with pytest.raises(AdapterError, match="LoRA-style file.*LoRA loader"):
        read_adapter(tmp_path / "lora.safetensors")


def test_other_format_metadata_is_refused(tmp_path):
    save_file({"x.lorad_up": torch.zeros(2, 1), "x.lorad_down": torch.zeros(1, 1)},
              str(tmp_path / "f.safetensors"), metadata={"wadi.format": "dora"})
    with pytest.raises(AdapterError, match="format 'dora'"):
        read_adapter(tmp_path / "f.safetensors")


def test_existing_output_needs_overwrite(tmp_path):
    unet, path = trained_unet_adapter(tmp_path)
    stamp = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        lorad.save_adapter(unet, path)
    assert path.read_bytes() == stamp
    lorad.save_adapter(unet, path, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
