"""Metric formulas on cases with known answers, and the shapes feature network."""

import numpy as np
import pytest
import torch

from wadi_core import metrics


def test_frechet_distance_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert metrics.frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    shifted = a + torch.tensor([3.0, 0, 4.0], dtype=torch.float64)
    assert metrics.frechet_distance(a, shifted) == pytest.approx(25.0, rel=1e-6)
    scaled = a * 2  # N(0, I) vs N(0, 4I): tr(I + 4I - 2*2I) = 3
    assert metrics.frechet_distance(a, scaled) == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError, match="at least two samples"):
        metrics.frechet_distance(a[:1], a)


def test_precision_recall_extremes():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(300, 4, generator=g)
    assert metrics.precision_recall(real, real.clone()) == {"precision": 1.0, "recall": 1.0}
    far = real + 100
    assert metrics.precision_recall(real, far) == {"precision": 0.0, "recall": 0.0}
    collapsed = real[:1].repeat(300, 1) + 1e-3 * torch.randn(300, 4, generator=g)
    pr = metrics.precision_recall(real, collapsed)
    assert pr["precision"] == 1.0 and pr["recall"] < 0.2  # mode collapse: precise, no recall


def test_features_runs_any_module():
    images = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    feats = metrics.features(torch.nn.Flatten(), images, batch_size=2)
    assert feats.shape == (5, 192) and feats.dtype == torch.float64 and float(feats.max()) == -1.0


def test_user_feature_network_files(tmp_path):
    example = torch.zeros(1, 3, 2, 2)
    torch.export.save(torch.export.export(torch.nn.Flatten(), (example,)), str(tmp_path / "f.pt2"))
    assert metrics.load_feature_network(tmp_path / "f.pt2")(example).shape == (1, 12)
    (tmp_path / "bad.pt2").write_text("no")
    with pytest.raises(ValueError, match="not a saved torch.export program"):
        metrics.load_feature_network(tmp_path / "bad.pt2")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        metrics.load_feature_network(tmp_path / "missing.pt2")


def test_clip_score_with_user_weights(tmp_path):
    """A tiny random CLIP saved locally stands in for the user's CLIP weights."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig)
    from wadi_core.shapes.components import write_tokenizer
    tok_dir = write_tokenizer(tmp_path / "clip")
    from transformers import CLIPTokenizer
    vocab = len(CLIPTokenizer.from_pretrained(str(tok_dir)))
    config = CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, max_position_embeddings=16, eos_token_id=vocab - 1).to_dict(),
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=8).to_dict(),
        projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "clip")
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    score = metrics.clip_score(images, ["a red circle"] * 3, tmp_path / "clip")
    assert 0 <= score <= 100


def test_domain_fid_separates_other_distributions_from_renders():
    """The feature net is trained to ignore mild noise, so FID must rise with what matters: a
    collapsed distribution (every image "a red circle") and blur beyond its augmentation."""
    from PIL import Image, ImageFilter
    from wadi_core.evaluate import reference_renders
    from wadi_core.shapes import sample_prompts
    from wadi_core.shapes.features import WEIGHTS, load_feature_net
    if not WEIGHTS.is_file():
        pytest.skip("the shapes feature network is not built yet")
    net = load_feature_net()
    prompts = [p.caption() for p in sample_prompts(256, "heldout", seed=0)]
    a, b = reference_renders(prompts, 1), reference_renders(prompts, 2)
    collapsed = reference_renders(["a red circle"] * 256, 3)
    blurred = np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(2.5))) for x in b])
    fa, fb, fc, fd = (metrics.features(net, x) for x in (a, b, collapsed, blurred))
    floor = metrics.frechet_distance(fa, fb)
    assert metrics.frechet_distance(fa, fc) > 3 * floor
    assert metrics.frechet_distance(fa, fd) > 1.5 * floor
