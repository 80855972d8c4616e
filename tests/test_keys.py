"""diffusers <-> original-LDM weight names."""

import pytest
import torch

from wadi_core.models import keys
from wadi_core.models.families import build_on_meta

from conftest import tiny_unet, tiny_vae


def test_round_trip_is_identity_on_a_tiny_unet():
    state = tiny_unet().state_dict()
    mapping = keys.unet_name_map(state)
    layout = keys.UNetLayout.from_ldm_keys(mapping.values())
    assert layout == keys.UNetLayout.from_diffusers_keys(state)
    assert {keys.unet_from_ldm(v, layout): k for k, v in mapping.items()} == {k: k for k in state}


@pytest.mark.parametrize("family", ["sd15", "sd21"])
def test_covers_every_full_size_unet_key(family):
    state = build_on_meta(family).state_dict()
    mapping = keys.unet_name_map(state)
    assert len(mapping) == len(state) == 686 and len(set(mapping.values())) == 686
    ldm = set(mapping.values())
    for known in ("time_embed.0.weight", "input_blocks.0.0.weight", "input_blocks.1.1.proj_in.weight",
                  "input_blocks.1.0.in_layers.2.weight", "input_blocks.3.0.op.weight",
                  "input_blocks.4.0.skip_connection.weight", "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                  "middle_block.2.emb_layers.1.weight", "output_blocks.2.1.conv.weight",
                  "output_blocks.5.2.conv.weight", "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
                  "out.0.weight", "out.2.bias"):
        assert known in ldm


def test_agrees_with_diffusers_single_file_converter():
    """Independent oracle: diffusers' LDM->diffusers converter must put every tensor of our LDM
    state dict back where it came from."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    unet = tiny_unet()
    state = unet.state_dict()
    ldm = {keys.LDM_UNET + v: state[k] for k, v in keys.unet_name_map(state).items()}
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_vae_conversion_agrees_with_diffusers():
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    vae = tiny_vae()
    state = vae.state_dict()
    ldm = keys.add_prefix(keys.vae_to_ldm(state), keys.LDM_VAE)
    assert "first_stage_model.decoder.up.1.block.0.conv1.weight" in ldm
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert set(back) == set(state)
    assert all(torch.equal(back[k].reshape(state[k].shape), state[k]) for k in state)


def test_non_unet_keys_give_a_clear_error():
    with pytest.raises(keys.KeyConversionError, match="not a diffusers UNet"):
        keys.unet_name_map(["encoder.conv_in.weight"])
    with pytest.raises(keys.KeyConversionError, match="not an original-layout SD UNet"):
        keys.UNetLayout.from_ldm_keys(["first_stage_model.encoder.conv_in.weight"])
