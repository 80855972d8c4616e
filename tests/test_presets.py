"""The paper's parameter counts (docs/lorad.md, "Which layers"), exact, on meta-device models."""

import pytest

from wadi_core import lorad
from wadi_core.models.families import build_on_meta, family_from_weight_shapes

SPEC = [  # family, preset, rank, layers, parameters
    ("sd15", "unet-student", 256, 182, 83_795_968),
    ("sd21", "unet-student", 256, 214, 94_429_184),
    ("sd15", "unet-fake", 32, 160, 9_378_816),
    ("pixart-alpha", "dit-student", 128, 283, 81_219_584),
    ("pixart-alpha", "dit-fake", 32, 280, 20_127_744),
    # not the paper's: SDXL by the same rules (wadi presets prints these)
    ("sdxl", "unet-student", 128, 739, 265_297_920),
    ("sdxl", "unet-fake", 32, 700, 64_491_520),
]
PAPER_TABLE3 = [("unet-student", 64, 20.95e6), ("unet-student", 128, 41.90e6), ("unet-student", 512, 167.59e6),
                ("unet-fake", 16, 4.69e6), ("unet-fake", 64, 18.76e6)]


@pytest.fixture(scope="module")
def models():
    return {f: build_on_meta(f) for f in ("sd15", "sd21", "pixart-alpha", "sdxl")}


@pytest.mark.parametrize("family,preset,rank,layers,params", SPEC)
def test_preset_counts_match_the_spec(models, family, preset, rank, layers, params):
    assert lorad.preset_parameter_count(models[family], preset, rank) == (layers, params)


@pytest.mark.parametrize("family,preset,rank,layers,params", SPEC)
def test_attaching_on_meta_gives_the_same_count(family, preset, rank, layers, params):
    model = build_on_meta(family)  # fresh: attach mutates
    assert len(lorad.attach(model, rank=rank, preset=preset)) == layers
    assert lorad.count_parameters(model) == params
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == params


@pytest.mark.parametrize("preset,rank,paper", PAPER_TABLE3)
def test_paper_table3_cross_checks(models, preset, rank, paper):
    _, params = lorad.preset_parameter_count(models["sd15"], preset, rank)
    assert round(params / 1e6, 2) == pytest.approx(paper / 1e6, abs=0.005)


@pytest.mark.parametrize("family,preset,rank,share", [("sd15", "unet-student", 256, 9.74),
                                                       ("sd21", "unet-student", 256, 10.92),
                                                       ("pixart-alpha", "dit-student", 128, 13.30)])
def test_trainable_share_matches_the_paper(models, family, preset, rank, share):
    model = models[family]
    _, params = lorad.preset_parameter_count(model, preset, rank)
    assert 100 * params / sum(p.numel() for p in model.parameters()) == pytest.approx(share, abs=0.02)


def test_families_are_recognised_from_shapes(models):
    for family, model in models.items():
        assert family_from_weight_shapes({n: tuple(p.shape) for n, p in model.named_parameters()}) == family
    assert family_from_weight_shapes({"x.weight": (1, 2)}) == "unknown"


def test_unknown_preset_names_the_choices(models):
    with pytest.raises(ValueError, match="unknown preset 'unet'.*unet-student"):
        lorad.select_targets(models["sd15"], preset="unet")


def test_presets_command_prints_exact_counts(capsys):
    from wadi_cli.cli import main
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for value in ("83,795,968", "94,429,184", "9,378,816", "81,219,584", "20,127,744"):
        assert value in out


def test_conv_preset_adds_the_block_convolutions(models):
    """unet-student-conv (ours, not the paper's) = unet-student plus every convolution under the blocks,
    each counted with its kernel flattened into rows; a Linear-only preset ignores include_conv."""
    from torch import nn
    from wadi_core.lorad.presets import UNET_BLOCKS
    model = models["sd15"]
    linear = {name for name, _ in lorad.select_targets(model, preset="unet-student")}
    assert {name for name, _ in lorad.select_targets(model, preset="unet-student", include_conv=True)} == linear
    chosen = dict(lorad.select_targets(model, preset="unet-student-conv"))
    convs = {name: m for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and name.startswith(UNET_BLOCKS)}
    assert set(chosen) == linear | set(convs)
    assert "down_blocks.0.resnets.0.conv1" in chosen and "conv_in" not in chosen and "conv_out" not in chosen
    _, linear_params = lorad.preset_parameter_count(model, "unet-student", 8)
    conv_params = sum(8 * (m.weight.shape[0] + m.weight[0].numel() // 2) for m in convs.values())
    assert lorad.preset_parameter_count(model, "unet-student-conv", 8) == (len(chosen), linear_params + conv_params)


def test_sdxl_is_the_full_size_unet_and_is_recognised(models):
    sdxl = models["sdxl"]
    assert sum(p.numel() for p in sdxl.parameters()) == 2_567_463_684  # SDXL base 1.0's UNet
    assert family_from_weight_shapes({n: tuple(p.shape) for n, p in sdxl.named_parameters()}) == "sdxl"
    assert all(not n.startswith("add_embedding") for n, _ in lorad.select_targets(sdxl, preset="unet-student"))

