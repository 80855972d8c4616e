"""ReVersion: the relation token, its losses, its files, the exemplar folder checks and the commands."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from wadi_cli.cli import main
from wadi_core.models import embeddings
from wadi_core.tasks.reversion import (ReVersionConfig, read_exemplars, relation_timesteps, steering_loss,
                                 train_relation)
from wadi_core.shapes import novel
from wadi_core.models import load_components
from wadi_core.shapes.render import render


@pytest.fixture
def teacher():
    return load_components()


def test_steering_loss_prefers_prepositions_and_only_moves_the_token():
    positives, negatives = torch.randn(4, 8), torch.randn(6, 8)
    near = positives.mean(0).clone().requires_grad_(True)
    far = negatives.mean(0).clone()
    assert steering_loss(near, positives, negatives) < steering_loss(far, positives, negatives)
    bank = torch.cat([positives, negatives]).requires_grad_(True)
    steering_loss(near, bank[:4], bank[4:]).backward()
    assert near.grad.abs().sum() > 0 and bank.grad is None


def test_relation_focal_sampling_favours_high_noise():
    g = torch.Generator().manual_seed(0)
    focal = relation_timesteps(20000, 1000, 0.5, g).float()
    uniform = relation_timesteps(20000, 1000, 0.0, g).float()
    assert focal.mean() > 600 and abs(uniform.mean().item() - 500) < 15
    assert focal.min() >= 0 and focal.max() <= 999


def test_add_token_refuses_known_words_and_starts_from_the_initialiser(teacher):
    with pytest.raises(embeddings.EmbeddingError, match="already in the tokenizer's vocabulary"):
        embeddings.add_token(teacher, "red", "in")
    with pytest.raises(embeddings.EmbeddingError, match="one word"):
        embeddings.add_token(teacher, "<a b>", "in")
    table = embeddings.embedding_table(teacher).weight
    init = table[embeddings.token_ids(teacher, "in")].mean(0).clone()
    new_id = embeddings.add_token(teacher, "<R>", "in")
    assert embeddings.token_ids(teacher, "a red circle <R> a blue square")[3] == new_id
    assert torch.equal(embeddings.embedding_table(teacher).weight[new_id], init)
    with pytest.raises(embeddings.EmbeddingError, match="already"):
        embeddings.add_token(teacher, "<R>", "in")


def test_training_moves_only_the_new_token(teacher, tmp_path):
    folder = novel.write_relation_exemplars(tmp_path / "ex", "inside", count=4)
    exemplars = read_exemplars(folder, "<R>", 32)
    before = embeddings.embedding_table(teacher).weight.detach().clone()
    unet_before = {k: v.clone() for k, v in teacher.unet.state_dict().items()}
    vector, history = train_relation(teacher, exemplars, ReVersionConfig(steps=3, batch_size=2, lr=1e-2))
    after = embeddings.embedding_table(teacher).weight
    assert len(history) == 3 and all(np.isfinite(h["loss"]) for h in history)
    assert torch.equal(after[: before.shape[0]], before)  # every old token exactly as it was
    assert not torch.allclose(vector, before[embeddings.token_ids(teacher, "in")].mean(0))
    assert all(torch.equal(v, teacher.unet.state_dict()[k]) for k, v in unet_before.items())
    assert not after.requires_grad


def test_embedding_files_round_trip_and_refuse_another_base(teacher, tmp_path):
    vector = torch.randn(64)
    ours = embeddings.save_embedding(vector, tmp_path / "rev.safetensors", "<R>", {"wadi.init": "in"})
    ti = embeddings.save_textual_inversion(vector, tmp_path / "my_rel.safetensors")
    assert load_file(str(ti))["emb_params"].shape == (1, 64)  # the layout ComfyUI and A1111 read
    for path, token in ((ours, "<R>"), (ti, "my_rel")):
        model = load_components()
        assert embeddings.load_embedding(model, path) == token
        new_id = embeddings.token_ids(model, token)
        assert len(new_id) == 1 and torch.allclose(embeddings.embedding_table(model).weight[new_id[0]], vector)
    save_file({"emb_params": torch.randn(1, 768)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(embeddings.EmbeddingError, match="768 values per token but this text encoder uses 64"):
        embeddings.load_embedding(teacher, tmp_path / "sd15.safetensors")
    save_file({"emb_params": torch.randn(3, 64)}, str(tmp_path / "multi.safetensors"))
    with pytest.raises(embeddings.EmbeddingError, match="3 vectors"):
        embeddings.read_embedding(tmp_path / "multi.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(embeddings.EmbeddingError, match="not a readable safetensors"):
        embeddings.read_embedding(tmp_path / "broken.safetensors")


def test_exemplar_folder_problems_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds 0 images"):
        read_exemplars(empty, "<R>", 32)
    folder = novel.write_relation_exemplars(tmp_path / "ex", "inside", count=2)
    table = json.loads((folder / "text.json").read_text())
    (folder / "text.json").unlink()
    with pytest.raises(FileNotFoundError, match="text.json is missing"):
        read_exemplars(folder, "<R>", 32)
    (folder / "text.json").write_text(json.dumps({**table, "99.png": ["a <R> b"]}))
    with pytest.raises(ValueError, match="'99.png', which is not an image"):
        read_exemplars(folder, "<R>", 32)
    (folder / "text.json").write_text(json.dumps({"00.png": table["00.png"]}))
    with pytest.raises(ValueError, match="01.png has no captions"):
        read_exemplars(folder, "<R>", 32)
    (folder / "text.json").write_text(json.dumps({"00.png": "a red circle in a blue square", "01.png": "x <R> y"}))
    with pytest.raises(ValueError, match="must each contain <R>"):
        read_exemplars(folder, "<R>", 32)


@pytest.mark.parametrize("relation", list(novel.NOVEL_RELATIONS))
def test_novel_relations_are_judged_exactly_on_renders(relation):
    kind = novel.novel_relation(relation)
    rng = np.random.default_rng(0)
    pairs = [kind.pairs("new")[i] for i in rng.integers(len(kind.pairs("new")), size=60)]
    images = np.stack([np.asarray(render(novel.Scene(kind.scene(a, b, rng), "gray", ""))) for a, b in pairs])
    assert novel.relation_accuracy(relation, images, pairs) == {"both": 1.0, "holds": 1.0}
    swapped = [(b, a) for a, b in pairs]
    assert novel.relation_accuracy(relation, images, swapped)["holds"] == 0.0
    assert not set(kind.pairs("new")) & set(kind.pairs("exemplar"))


def test_reversion_commands_end_to_end(tmp_path, capsys):
    out = tmp_path / "rev"
    assert main(["reversion", "--out", str(out), "--steps", "2", "--count", "3", "--relation", "inside",
                 "--quiet"]) == 0
    for name in ("reversion.safetensors", "embeddings/wadi_relation.safetensors", "loss.png", "samples.png",
                 "exemplars/text.json"):
        assert (out / name).is_file(), name
    assert main(["generate", "--prompt", "a red circle <R> a blue square", "--embedding",
                 str(out / "reversion.safetensors"), "--steps", "2", "--out", str(tmp_path / "gen"), "--quiet"]) == 0
    assert main(["reversion-eval", "--embedding", str(out / "reversion.safetensors"), "--count", "2", "--steps", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["relation"] == "inside" and set(metrics["results"]) == {"renders through the VAE (the ceiling)",
                                                                         "teacher (2 steps), '<R>'",
                                                                         "teacher (2 steps), 'in'"}
    # a real teacher needs exemplars; a token the vocabulary has is refused with the fix
    assert main(["reversion", "--out", str(tmp_path / "bad"), "--token", "red", "--steps", "1", "--quiet"]) == 2
    assert "already in the tokenizer's vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    empty = tmp_path / "no-images"
    empty.mkdir()
    assert main(["reversion", "--out", str(tmp_path / "bad2"), "--exemplars", str(empty), "--quiet"]) == 2
    assert "holds 0 images" in capsys.readouterr().err


def test_a_textual_inversion_from_elsewhere_is_not_evaluated(tmp_path, capsys):
    embeddings.save_textual_inversion(torch.randn(64), tmp_path / "other.safetensors")
    assert main(["reversion-eval", "--embedding", str(tmp_path / "other.safetensors"), "--out",
                 str(tmp_path / "e")]) == 2
    assert "not learned on an embedded relation" in capsys.readouterr().err
