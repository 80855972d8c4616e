"""Pipeline folders whose weights are saved in a variant, as diffusers' and transformers'
``save_pretrained(variant="fp16")`` write them and a download with ``variant="fp16"`` leaves them in the Hugging Face
cache (``model.fp16.safetensors``; sharded: ``model.fp16-00001-of-00002.safetensors`` with
``model.safetensors.index.fp16.json``). The folders here are written by those libraries' own writers, so the names
are theirs, not ours."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_sd_folder, write_sdxl_folder
from test_dit import tiny_pixart_folder

from wadi_core.models import load_components, open_checkpoint
from wadi_core.models.components import ModelFolderError, check_model_folder

# the parts with weights, by the class that reads them
PARTS = {"unet": "diffusers.UNet2DConditionModel", "transformer": "diffusers.PixArtTransformer2DModel",
         "vae": "diffusers.AutoencoderKL", "text_encoder": None, "text_encoder_2": None}


def part_class(folder: Path):
    """The class that saved ``folder``: diffusers' from ``_class_name``, transformers' from ``architectures``."""
    import diffusers
    import transformers

    config = json.loads((folder / "config.json").read_text())
    if "_class_name" in config:
        return getattr(diffusers, config["_class_name"])
    return getattr(transformers, config["architectures"][0])


def as_variant(plain: Path, out: Path, shard: str) -> Path:
    """``plain`` with every part's weights saved again in fp16 under the fp16 variant's names (``shard``'s part
    sharded into small files), nothing under the plain names."""
    shutil.copytree(plain, out, ignore=shutil.ignore_patterns("*.safetensors"))
    for part in PARTS:
        if (plain / part).is_dir():
            model = part_class(plain / part).from_pretrained(str(plain / part)).half()
            model.save_pretrained(out / part, variant="fp16", max_shard_size="10KB" if part == shard else "10GB")
    assert not list(out.rglob("*model.safetensors"))  # only variant names: a reader of plain names finds nothing
    return out


def weights(components) -> dict[str, torch.Tensor]:
    parts = {"unet": components.unet, "vae": components.vae, "text": components.text_encoder}
    return {f"{name}.{k}": v for name, module in parts.items() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("family, write, shard", [
    ("sd", write_sd_folder, "unet"), ("sdxl", write_sdxl_folder, "text_encoder_2"),
    ("pixart", tiny_pixart_folder, "transformer")])
def test_a_folder_saved_in_the_fp16_variant_loads_as_its_weights_in_fp16(tmp_path, family, write, shard):
    plain = write(tmp_path / family)
    variant = as_variant(plain, tmp_path / f"{family}-fp16", shard)
    assert any(p.name.endswith(".index.fp16.json") for p in (variant / shard).iterdir())  # sharded, as asked
    want, got = weights(load_components(plain)), weights(load_components(variant))
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], expected), name
    backbone = "transformer" if family == "pixart" else "unet"
    assert open_checkpoint(variant).shapes == open_checkpoint(plain).shapes  # analysis, merge and extract read it
    assert open_checkpoint(variant).backbone == backbone


def test_a_folder_without_a_parts_weights_in_any_variant_names_the_plain_file(tmp_path):
    folder = as_variant(write_sd_folder(tmp_path / "sd"), tmp_path / "sd-fp16", "unet")
    assert check_model_folder(folder) == folder
    for file in (folder / "vae").glob("*.safetensors"):
        file.unlink()
    with pytest.raises(ModelFolderError, match="vae/diffusion_pytorch_model.safetensors is missing"):
        load_components(folder)
