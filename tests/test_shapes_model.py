"""The embedded model's components, its training script, sampling, `wadi generate` and `wadi eval`.

Tests build untrained components of the real architecture (fast on CPU); the shipped, trained
model is checked separately when it is present."""

import json

import numpy as np
import pytest
import torch

from wadi_cli.cli import main
from wadi_core.models import ModelFolderError, load_components
from wadi_core.models.families import family_of_model
from wadi_core.sampling import sample
from wadi_core.shapes import components as C
from wadi_core.shapes.dataset import all_prompts
from wadi_core.shapes.world import vocabulary


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes") / "model"
    C.save_model_folder(C.new_components(seed=0), folder)
    return folder


def test_tokenizer_makes_every_world_word_one_token(tmp_path):
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(str(C.write_tokenizer(tmp_path / "tok")))
    for word in vocabulary():
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    longest = max((p.caption() for k in ("single", "relation") for p in all_prompts(k)), key=lambda c: len(c.split()))
    assert len(tok(longest).input_ids) <= C.MAX_TOKENS
    pieces = tok("<R>", add_special_tokens=False).input_ids
    assert len(pieces) > 1 and tok.unk_token_id not in pieces  # new words fall back to characters


def test_model_folder_loads_like_stable_diffusion(model_dir):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    out = pipe(["a red circle"], num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 32, 32, 3)
    c = load_components(model_dir)
    assert c.unet.dtype == torch.float32 and family_of_model(c.unet) == "shapes"
    total = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    assert total < 20 * 2**20


def test_partial_model_folder_names_the_missing_file(model_dir, tmp_path, capsys):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="vae/diffusion_pytorch_model.safetensors is missing"):
        load_components(broken)
    assert main(["generate", "--model", str(broken), "--prompt", "a red circle", "--out", str(tmp_path / "o")]) == 2
    assert "is missing" in capsys.readouterr().err


def test_a_unet_file_without_a_weight_is_named_in_one_line(model_dir, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    from wadi_core.models import CheckpointError
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    file = broken / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(file))
    del state["conv_in.bias"]
    save_file(state, str(file))
    with pytest.raises(CheckpointError, match=r"not a complete diffusers model folder: .* 'conv_in.bias' .* missing"):
        load_components(broken, unet_dtype=torch.bfloat16)
    assert main(["generate", "--model", str(broken), "--prompt", "a red circle", "--out", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (not transformers' bar)
    assert len(errors) == 1 and "conv_in.bias" in errors[0], errors
    assert not (tmp_path / "o").exists()


def test_sampling_is_seeded_per_image(model_dir):
    c = load_components(model_dir)
    prompts = ["a red circle", "a blue square", "a green triangle left of a yellow circle"]
    a = sample(c, prompts, [5, 6, 7], steps=3, batch_size=3, progress=False)
    b = sample(c, prompts[1:], [6, 7], steps=3, batch_size=1, progress=False)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.abs(a[1:].astype(int) - b.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="no prompts"):
        sample(c, [], steps=3)


def test_v_prediction_models_sample_and_other_predictions_are_refused(model_dir):
    c = load_components(model_dir)
    eps = sample(c, ["a red circle"], [0], steps=2, progress=False)
    c.scheduler = type(c.scheduler).from_config(c.scheduler.config, prediction_type="v_prediction")
    v = sample(c, ["a red circle"], [0], steps=2, progress=False)  # the scheduler reads the same output as v
    assert v.shape == eps.shape and np.abs(v.astype(int) - eps.astype(int)).max() > 10
    c.scheduler = type(c.scheduler).from_config(c.scheduler.config, prediction_type="sample")
    with pytest.raises(ValueError, match="predicts 'sample'"):
        sample(c, ["a red circle"], steps=2, progress=False)


def test_generate_command(model_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na small blue square at the top left\n")
    assert main(["generate", "--model", str(model_dir), "--prompts", str(prompts), "--num-per-prompt", "2",
                 "--steps", "2", "--out", str(out), "--quiet"]) == 0
    assert len(list(out.glob("*.png"))) == 5 and (out / "grid.png").is_file()
    assert "images/s" in capsys.readouterr().out
    assert main(["generate", "--model", str(model_dir), "--prompt", "x", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["generate", "--model", str(model_dir), "--prompts", str(empty), "--out", str(tmp_path / "e")]) == 2
    assert "holds no prompts" in capsys.readouterr().err


def state_log(work):
    return torch.load(work / "state.pt", weights_only=False)["log"]


def test_training_script_resumes_exactly(tmp_path):
    from wadi_core.shapes import train_teacher as T
    common = ["--vae-steps", "3", "--unet-steps", "3", "--batch", "4", "--vae-batch", "4", "--checkpoint-every", "2"]
    assert T.main(["--work", str(tmp_path / "a"), "--export", str(tmp_path / "a_model"), *common]) == 0
    assert T.main(["--work", str(tmp_path / "b"), "--stop-after", "4", *common]) == 0
    state = torch.load(tmp_path / "b" / "state.pt", weights_only=False)
    assert state["stage"] == "unet" and state["step"] == 1
    with pytest.raises(ValueError, match="other settings \\(batch\\)"):
        T.main(["--work", str(tmp_path / "b"), "--resume", *common[:4], "--batch", "8", *common[6:]])
    assert T.main(["--work", str(tmp_path / "b"), "--resume", "--export", str(tmp_path / "b_model"), *common]) == 0
    # The resumed run retraces the uninterrupted one: same steps and losses to float rounding
    # (1e-7 after the optimiser state round trip), weights within one fp16 ulp.
    a_log, b_log = state_log(tmp_path / "a"), state_log(tmp_path / "b")
    assert [(e["stage"], e["step"]) for e in a_log] == [(e["stage"], e["step"]) for e in b_log]
    assert all(abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]) for x, y in zip(a_log, b_log))
    from safetensors.torch import load_file
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        a, b = load_file(tmp_path / "a_model" / part), load_file(tmp_path / "b_model" / part)
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4, rtol=1e-3) for k in a), part
    with pytest.raises(FileExistsError, match="--resume"):
        T.main(["--work", str(tmp_path / "a"), *common])
    load_components(tmp_path / "b_model")


def test_eval_command_writes_metrics(model_dir, tmp_path, capsys):
    pytest.importorskip("safetensors")
    from wadi_core.shapes.features import WEIGHTS
    if not WEIGHTS.is_file():
        pytest.skip("the shapes feature network is not built yet")
    out = tmp_path / "m.json"
    assert main(["eval", "--model", str(model_dir), "--num-prompts", "12", "--steps", "2", "--floor",
                 "--out", str(out), "--grid", str(tmp_path / "g.png"), "--quiet"]) == 0
    report = json.loads(out.read_text())
    result = report["model_result"]
    assert result["prompt_accuracy"]["judged"] == 12 and result["fid"] > report["render_floor_fid"] >= 0
    assert result["images_per_second"] > 0 and (tmp_path / "g.png").is_file()


def test_training_script_adds_a_layout_stage_to_a_finished_run(tmp_path):
    from wadi_core.shapes import train_teacher as T
    common = ["--vae-steps", "2", "--unet-steps", "2", "--batch", "4", "--vae-batch", "4"]
    work = tmp_path / "run"
    assert T.main(["--work", str(work), *common]) == 0
    config = work / "tokenizer" / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"marker": 1,', 1))  # a resumed run keeps its own files
    layout = ["--layout-steps", "3", "--layout-weight", "0.5"]
    assert T.main(["--work", str(work), "--resume", "--stop-after", "5", *common, *layout]) == 0
    state = torch.load(work / "state.pt", weights_only=False)
    assert state["stage"] == "layout" and state["step"] == 1
    with pytest.raises(ValueError, match="layout stage was started with other settings"):
        T.main(["--work", str(work), "--resume", *common, "--layout-steps", "3", "--layout-weight", "1"])
    assert T.main(["--work", str(work), "--resume", "--export", str(tmp_path / "model"), *common, *layout]) == 0
    state = torch.load(work / "state.pt", weights_only=False)
    assert state["stage"] == "done" and state["layout_done"] == 3
    entries = [e for e in state["log"] if e["stage"] == "layout"]
    assert [e["step"] for e in entries] == [0, 1, 2]
    assert all(abs(e["loss"] - e["eps"] - 0.5 * e["x0"]) < 1e-5 for e in entries)
    assert '"marker": 1' in config.read_text()
    load_components(tmp_path / "model")


def test_layout_loss_scores_a_high_noise_half_in_x0_space():
    from wadi_core.shapes import train_teacher as T
    args = T.parse_args(["--work", "unused", "--batch", "4", "--layout-min-t", "950"])
    c = C.new_components(0)
    torch.manual_seed(0)
    plain = T.diffusion_loss(c, args, "unet", 0, 0.0)
    assert set(plain) == {"eps", "loss"} and torch.equal(plain["eps"], plain["loss"])
    seen, forward = [], c.unet.forward
    c.unet.forward = lambda x, t, *a, **k: seen.append(t.clone()) or forward(x, t, *a, **k)
    with_layout = T.diffusion_loss(c, args, "unet", 0, 2.0)
    assert bool((seen[0][1::2] >= 950).all()) and with_layout["x0"] > 0
    assert torch.allclose(with_layout["loss"], with_layout["eps"] + 2.0 * with_layout["x0"])


def test_layout_share_picks_every_nth_sample():
    from wadi_core.shapes import train_teacher as T
    args = T.parse_args(["--work", "unused", "--batch", "8", "--layout-min-t", "950", "--layout-share", "0.25"])
    c = C.new_components(0)
    seen, forward = [], c.unet.forward
    c.unet.forward = lambda x, t, *a, **k: seen.append(t.clone()) or forward(x, t, *a, **k)
    T.diffusion_loss(c, args, "unet", 0, 1.0)
    assert bool((seen[0][3::4] >= 950).all())
    with pytest.raises(SystemExit):
        T.parse_args(["--work", "unused", "--layout-share", "0.75"])


def test_training_script_reuses_the_vae_of_another_run(tmp_path, capsys):
    from wadi_core.shapes import train_teacher as T
    vae = ["--vae-steps", "2", "--vae-batch", "4", "--batch", "4"]
    assert T.main(["--work", str(tmp_path / "a"), "--unet-steps", "1", *vae]) == 0
    assert T.main(["--work", str(tmp_path / "b"), "--vae-from", str(tmp_path / "a"), "--unet-steps", "2",
                   "--lr", "1e-4", "--stop-after", "3", *vae]) == 0
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=False)
    assert b["stage"] == "unet" and b["step"] == 1 and b["vae_config"] == a["vae_config"]
    assert all(torch.equal(a["vae"][k], b["vae"][k]) for k in a["vae"])
    assert [e["stage"] for e in b["log"]] == ["vae", "vae", "unet"]
    # resuming does not need --vae-from again
    assert T.main(["--work", str(tmp_path / "b"), "--resume", "--unet-steps", "2", "--lr", "1e-4", *vae]) == 0
    with pytest.raises(ValueError, match="other settings \\(vae_lr\\)"):
        T.main(["--work", str(tmp_path / "c"), "--vae-from", str(tmp_path / "a"), "--vae-lr", "1e-4", *vae])
    assert T.main(["--work", str(tmp_path / "d"), "--stop-after", "1", *vae]) == 0
    with pytest.raises(ValueError, match="not finished"):
        T.main(["--work", str(tmp_path / "e"), "--vae-from", str(tmp_path / "d"), *vae])


def test_training_script_latent_pool_and_layout_from(tmp_path):
    from wadi_core.shapes import train_teacher as T
    common = ["--vae-steps", "2", "--vae-batch", "4", "--unet-steps", "3", "--batch", "4", "--latent-pool", "10",
              "--layout-weight", "0.5", "--layout-from", "2", "--layout-min-t", "950"]
    assert T.main(["--work", str(tmp_path / "a"), *common]) == 0
    unet = [e for e in state_log(tmp_path / "a") if e["stage"] == "unet"]
    assert ["x0" in e for e in unet] == [False, False, True]  # the layout term starts at --layout-from
    # The pool is rebuilt from the seed on resume, so the resumed run retraces the uninterrupted one.
    assert T.main(["--work", str(tmp_path / "b"), "--stop-after", "3", *common]) == 0
    assert T.main(["--work", str(tmp_path / "b"), "--resume", *common]) == 0
    resumed = [e for e in state_log(tmp_path / "b") if e["stage"] == "unet"]
    assert all(abs(x["loss"] - y["loss"]) <= 1e-5 * x["loss"] for x, y in zip(unet, resumed))
    # A state written before --latent-pool existed resumes with the pool off.
    old = tmp_path / "old"
    assert T.main(["--work", str(old), "--stop-after", "1", *common[:6]]) == 0
    state = torch.load(old / "state.pt", weights_only=False)
    del state["settings"]["latent_pool"]
    del state["late_settings"]["layout_from"]
    torch.save(state, old / "state.pt")
    assert T.main(["--work", str(old), "--resume", *common[:6]]) == 0
    with pytest.raises(ValueError, match="other settings"):
        T.main(["--work", str(old), "--resume", *common[:6], "--latent-pool", "10"])


def test_latent_pool_draws_batches_from_encoded_scenes():
    from wadi_core.shapes import train_teacher as T
    args = T.parse_args(["--work", "unused", "--batch", "4", "--latent-pool", "6"])
    c = C.new_components(0)
    pool = T.build_latent_pool(c, args)
    assert pool["mean"].shape == (6, 4, 8, 8) and len(pool["captions"]) == 6
    latents, captions = T.latents_for_step(c, args, "unet", 0, torch.Generator().manual_seed(0), pool)
    assert latents.shape == (4, 4, 8, 8) and set(captions) <= set(pool["captions"])


def test_side_loss_targets_name_each_objects_side_and_colour():
    from wadi_core.shapes import side_loss
    from wadi_core.shapes.world import COLORS, parse_prompt
    tokenizer = C.new_components(seed=0).tokenizer
    prompts = [parse_prompt("a green triangle left of a yellow circle"), parse_prompt("a red circle below a blue square")]
    caption_at, token_at, side, colour = side_loss.side_targets(tokenizer, prompts)
    names = [(int(i), side_loss.SIDE_NAMES[s], list(COLORS)[c]) for i, s, c in zip(caption_at, side, colour)]
    # from the relation word on: "left of" -> green on the left, "a yellow circle" -> yellow on the right
    assert names == [(0, "left", "green")] * 2 + [(0, "right", "yellow")] * 3 \
        + [(1, "bottom", "red")] + [(1, "top", "blue")] * 3
    assert token_at.tolist() == [4, 5, 6, 7, 8, 4, 5, 6, 7]  # every world word is one token after <start>
    head = side_loss.new_head(64, seed=0)
    assert torch.equal(head.weight, side_loss.new_head(64, seed=0).weight)
    components = C.new_components(seed=0)
    loss = side_loss.side_loss(components, head, side_loss.prompts_for_step(0, 0, n=8))
    loss.backward()
    assert loss > 0 and all(p.grad is not None for p in components.text_encoder.parameters() if p.requires_grad)


def test_training_script_side_loss_resumes_and_is_not_exported(tmp_path):
    from wadi_core.shapes import train_teacher as T
    common = ["--vae-steps", "2", "--vae-batch", "4", "--unet-steps", "3", "--batch", "4", "--side-weight", "0.1"]
    assert T.main(["--work", str(tmp_path / "a"), "--export", str(tmp_path / "model"), *common]) == 0
    unet = [e for e in state_log(tmp_path / "a") if e["stage"] == "unet"]
    assert all(abs(e["loss"] - e["eps"] - 0.1 * e["side"]) < 1e-5 for e in unet)
    assert T.main(["--work", str(tmp_path / "b"), "--stop-after", "3", *common]) == 0
    assert T.main(["--work", str(tmp_path / "b"), "--resume", *common]) == 0
    resumed = [e for e in state_log(tmp_path / "b") if e["stage"] == "unet"]
    assert all(abs(x["loss"] - y["loss"]) <= 1e-5 * x["loss"] for x, y in zip(unet, resumed))
    load_components(tmp_path / "model")  # a plain SD folder: the head is not part of it
    assert not any("side" in p.name for p in (tmp_path / "model").rglob("*"))
    assert T.main(["--work", str(tmp_path / "c"), *common, "--side-from", "2"]) == 0
    late = [e for e in state_log(tmp_path / "c") if e["stage"] == "unet"]
    assert ["side" in e for e in late] == [False, False, True]  # the side loss starts at --side-from
