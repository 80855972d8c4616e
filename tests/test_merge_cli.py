"""`wadi merge`, `wadi export-lora` and `wadi inspect` on tiny real checkpoints."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from wadi_cli.cli import main
from wadi_core import lorad
from wadi_core.models import keys, open_checkpoint

from conftest import randomize, tiny_text_encoder, tiny_unet, tiny_vae


def make_adapter(path, seed, rank=4, cross_attention_dim=32):
    unet = tiny_unet(cross_attention_dim=cross_attention_dim)
    lorad.attach(unet, rank=rank, preset="unet-student")
    randomize(lorad.trainable_parameters(unet), seed=seed, std=0.3)
    return lorad.save_adapter(unet, path, preset="unet-student")


def merged_in_memory(adapters):
    unet = tiny_unet()
    for i, (path, strength) in enumerate(adapters):
        lorad.load_adapter(unet, path, adapter_name=f"a{i}", strength=strength)
    lorad.merge_adapters(unet)
    lorad.detach(unet, unmerge=False)
    return unet.state_dict()


@pytest.fixture
def adapters(tmp_path):
    return make_adapter(tmp_path / "a.safetensors", 1), make_adapter(tmp_path / "b.safetensors", 2)


@pytest.fixture
def single_file(tmp_path):
    """An original-layout checkpoint as A1111/ComfyUI users have them, plus an extra tensor."""
    unet = tiny_unet().state_dict()
    tensors = {keys.LDM_UNET + v: unet[k] for k, v in keys.unet_name_map(unet).items()}
    tensors.update(keys.add_prefix(keys.vae_to_ldm(tiny_vae().state_dict()), keys.LDM_VAE))
    tensors.update(keys.add_prefix(keys.clip_l_to_ldm(tiny_text_encoder().state_dict()), keys.LDM_CLIP))
    tensors["model_ema.decay"] = torch.tensor(0.9999)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"note": "kept"})
    return path


def assert_close_states(got, want):
    assert set(got) == set(want)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k


def test_merge_diffusers_folder_to_diffusers(pipeline_dir, adapters, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge", "--base", str(pipeline_dir), "--adapter", f"{adapters[0]}:0.7",
                 "--adapter", str(adapters[1]), "--out", str(out), "--quiet"]) == 0
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    assert_close_states(unet.state_dict(), merged_in_memory([(adapters[0], 0.7), (adapters[1], 1.0)]))
    assert (out / "vae" / "config.json").is_file() and (out / "model_index.json").is_file()
    assert load_file(out / "vae" / "diffusion_pytorch_model.safetensors").keys() == \
        load_file(pipeline_dir / "vae" / "diffusion_pytorch_model.safetensors").keys()


def test_merge_diffusers_folder_to_single_file(pipeline_dir, adapters, tmp_path):
    out = tmp_path / "merged.safetensors"
    assert main(["merge", "--base", str(pipeline_dir), "--adapter", str(adapters[0]), "--out", str(out),
                 "--quiet"]) == 0
    state = load_file(out)
    assert any(k.startswith(keys.LDM_VAE) for k in state) and any(k.startswith(keys.LDM_CLIP) for k in state)
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    back = convert_ldm_unet_checkpoint(state, dict(tiny_unet().config))
    assert_close_states(back, merged_in_memory([(adapters[0], 1.0)]))


def test_merge_single_file_keeps_everything_else(single_file, adapters, tmp_path):
    out = tmp_path / "merged.safetensors"
    assert main(["merge", "--base", str(single_file), "--adapter", str(adapters[1]), "--out", str(out),
                 "--quiet"]) == 0
    before, after = load_file(single_file), load_file(out)
    assert set(before) == set(after)
    unet_keys = {k for k in before if k.startswith(keys.LDM_UNET)}
    assert all(torch.equal(before[k], after[k]) for k in set(before) - unet_keys)
    changed = [k for k in unet_keys if not torch.equal(before[k], after[k])]
    assert changed and all("transformer_blocks" in k or "proj_" in k or "emb_layers" in k for k in changed)
    ckpt = open_checkpoint(out)
    merged = {n: ckpt.read(n) for n in ckpt.stored}
    assert_close_states(merged, merged_in_memory([(adapters[1], 1.0)]))
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["note"] == "kept"


def test_merge_then_negative_strength_restores_the_base(single_file, adapters, tmp_path):
    once = tmp_path / "once.safetensors"
    back = tmp_path / "back.safetensors"
    main(["merge", "--base", str(single_file), "--adapter", str(adapters[0]), "--out", str(once), "--quiet"])
    main(["merge", "--base", str(once), "--adapter", f"{adapters[0]}:-1", "--out", str(back), "--quiet"])
    before, after = load_file(single_file), load_file(back)
    for k in before:
        assert torch.allclose(before[k], after[k], atol=1e-6)


def test_merge_refuses_before_writing(single_file, adapters, tmp_path, capsys):
    wrong = make_adapter(tmp_path / "wrong.safetensors", 3, cross_attention_dim=48)
    out = tmp_path / "out.safetensors"
    assert main(["merge", "--base", str(single_file), "--adapter", str(wrong), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another base model" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    out.write_text("precious")
    assert main(["merge", "--base", str(single_file), "--adapter", str(adapters[0]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "precious"
    assert main(["merge", "--base", str(single_file), "--adapter", str(adapters[0]), "--out", str(tmp_path / "x"),
                 "--format", "diffusers"]) == 2
    assert "(family 'unknown'; SD1.x, SD2.x and SDXL are known)" in capsys.readouterr().err


def test_bad_base_paths(tmp_path, adapters, capsys):
    (tmp_path / "folder").mkdir()
    vae_only = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, str(vae_only))
    for base, message in ((tmp_path / "nope", "does not exist"), (tmp_path / "folder", "neither a diffusers"),
                          (vae_only, "holds no Stable Diffusion UNet")):
        assert main(["merge", "--base", str(base), "--adapter", str(adapters[0]),
                     "--out", str(tmp_path / "o.safetensors")]) == 2
        assert message in capsys.readouterr().err


def test_export_lora_error_falls_with_rank_and_vanishes_at_full_rank(pipeline_dir, adapters, tmp_path, capsys):
    errors = []
    for rank in (2, 8, 64):  # 64: the full rank of the largest adapted layer
        out = tmp_path / f"lora{rank}.safetensors"
        assert main(["export-lora", "--base", str(pipeline_dir), "--adapter", str(adapters[0]), "--rank", str(rank),
                     "--dtype", "fp32", "--out", str(out), "--quiet"]) == 0
        line = [l for l in capsys.readouterr().out.splitlines() if "relative approximation error" in l][0]
        errors.append(float(line.split(":")[1].split("%")[0]) / 100)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5
    lora = load_file(tmp_path / "lora64.safetensors")
    base = tiny_unet().state_dict()
    merged = merged_in_memory([(adapters[0], 1.0)])
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    key = "lora_unet_" + name.replace(".", "_")
    up, down = lora[f"{key}.lora_up.weight"], lora[f"{key}.lora_down.weight"]
    scale = lora[f"{key}.alpha"] / up.shape[1]
    assert torch.allclose(base[name + ".weight"] + scale * up @ down, merged[name + ".weight"], atol=1e-5)


def test_inspect(adapters, capsys):
    assert main(["inspect", str(adapters[0])]) == 0
    out = capsys.readouterr().out
    assert "rank        4" in out and "unet-student" in out and "angles" in out
    assert main(["inspect", str(adapters[0]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == lorad.read_adapter(adapters[0]).parameter_count
    assert info["angle_max_abs_deg"] > 0


def test_console_script_reports_errors_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "wadi_cli.cli", "inspect", str(tmp_path / "missing.safetensors")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"wadi inspect: error: adapter file {tmp_path / 'missing.safetensors'} "
                                     "does not exist (or is not a file); check the path")
