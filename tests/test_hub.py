"""A model named by its Hugging Face Hub id (``owner/name``), as diffusers takes it. No machine here reaches the Hub:
the cached case runs on a cache laid out as huggingface_hub writes it (blobs named by their hash, a snapshot folder
of links to them, ``refs/main`` naming the commit), offline; what a download takes is checked through
huggingface_hub's own file filter."""

import hashlib
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import randomize, tiny_unet, write_sd_folder
from PIL import Image
from safetensors.torch import load_file, save_file

from wadi_cli.cli import main
from wadi_core import lorad
from wadi_core.lorad.io import read_adapter_safetensors
from wadi_core.models import components, hub, load_components, open_checkpoint
from wadi_webui import actions

REPO = "wadi-test/tiny-sd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """``folder`` as the Hub's cache holds a downloaded repository at ``commit``, which the branch or tag ``ref``
    names; returns its snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny SD folder, and the same as the cached download of ``REPO``."""
    root = tmp_path_factory.mktemp("hub")
    folder = write_sd_folder(root / "sd")
    return folder, root / "cache", write_hub_cache(root / "cache", REPO, folder)


@pytest.fixture
def offline(model, monkeypatch):
    """huggingface_hub offline (``HF_HUB_OFFLINE=1``) on the test cache, with nothing remembered from another test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(model[1]))
    forget()
    yield model
    forget()


def forget() -> None:
    hub._snapshot.cache_clear()
    hub._download.cache_clear()
    hub.tokenizer_folder.cache_clear()


def pixels(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def test_a_cached_hub_id_reads_as_its_folder_in_every_command(offline, tmp_path):
    folder, _, snapshot = offline
    assert Path(hub.local_path(REPO)) == snapshot
    assert open_checkpoint(REPO).family == open_checkpoint(folder).family
    assert load_components(REPO).unet.config == load_components(folder).unet.config
    for name, model in (("id", REPO), ("folder", str(folder))):
        assert main(["generate", "--model", model, "--prompt", "a red circle", "--steps", "2",
                     "--out", str(tmp_path / name), "--quiet"]) == 0
    drawn = pixels(tmp_path / "id")
    assert drawn and all(np.array_equal(a, b) for a, b in zip(drawn, pixels(tmp_path / "folder"), strict=True))
    # a distillation records the id as its teacher, so that its student names the same model on any machine
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    assert main(["distill", "--model", REPO, "--prompts", str(prompts), "--out", str(tmp_path / "run"), "--steps", "1",
                 "--batch-size", "2", "--student-rank", "2", "--fake-rank", "2", "--sample-every", "0",
                 "--report-to", "none", "--quiet"]) == 0
    student = tmp_path / "run" / "student.safetensors"
    assert read_adapter_safetensors(student, tensors=False)[0]["wadi.teacher"] == REPO
    # the web UI's model field takes the id as well
    gallery, _ = actions.generate_images(REPO, str(student), "a red circle", 0, 1, False)
    assert len(gallery) == 1
    # a merge copies the snapshot's linked files as files of its own
    unet = tiny_unet()
    lorad.attach(unet, rank=2, preset="unet-student")
    randomize(lorad.trainable_parameters(unet), seed=1, std=0.3)
    adapter = lorad.save_adapter(unet, tmp_path / "a.safetensors", preset="unet-student")
    assert main(["merge", "--model", REPO, "--adapter", str(adapter), "--out", str(tmp_path / "merged"),
                 "--quiet"]) == 0
    weights = tmp_path / "merged" / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.is_file() and not weights.is_symlink()
    assert components.check_model_folder(tmp_path / "merged")


def test_files_of_a_hub_repository_are_replacement_unets_and_adapters(offline, tmp_path):
    """As the authors publish theirs (``gudaochangsheng/WaDi/rotated_unet-sdv1-5.safetensors``, the base's UNet with
    a LoRaD adapter merged in): such a UNet and an adapter named by repository and path draw what the same files
    draw from disk, and ``wadi extract`` reads the adapter back from the two Hub names."""
    folder = offline[0]
    files = tmp_path / "files"
    (files / "students").mkdir(parents=True)
    unet = load_components(folder).unet
    lorad.attach(unet, rank=2, preset="unet-student")
    randomize(lorad.trainable_parameters(unet), seed=3, std=0.3)
    lorad.save_adapter(unet, files / "students" / "a.safetensors", preset="unet-student")
    lorad.merge_adapters(unet)
    lorad.detach(unet, unmerge=False)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(files / "rotated_unet.safetensors"))
    write_hub_cache(offline[1], "wadi-test/released", files)
    for name, unet_file, adapter in (("hub", "wadi-test/released/rotated_unet.safetensors",
                                      "wadi-test/released/students/a.safetensors"),
                                     ("disk", str(files / "rotated_unet.safetensors"),
                                      str(files / "students" / "a.safetensors"))):
        assert main(["generate", "--model", REPO, "--unet", unet_file, "--one-step", "--prompt", "a red circle",
                     "--out", str(tmp_path / f"unet-{name}"), "--quiet"]) == 0
        assert main(["generate", "--model", str(folder), "--student", f"{adapter}:0.5", "--prompt", "a red circle",
                     "--out", str(tmp_path / f"adapter-{name}"), "--quiet"]) == 0
    for kind in ("unet", "adapter"):
        drawn = pixels(tmp_path / f"{kind}-hub")
        assert drawn and all(np.array_equal(a, b) for a, b in zip(drawn, pixels(tmp_path / f"{kind}-disk"),
                                                                  strict=True))
    assert not np.array_equal(pixels(tmp_path / "unet-hub")[0], pixels(tmp_path / "adapter-hub")[0])
    gallery, _ = actions.generate_images(REPO, "wadi-test/released/students/a.safetensors:0.5", "a red circle", 0, 1,
                                         False, backbone="wadi-test/released/rotated_unet.safetensors")
    assert len(gallery) == 1  # the web UI's adapter and replacement UNet fields take Hub files
    assert main(["extract", "--model", REPO, "--merged", "wadi-test/released/rotated_unet.safetensors", "--rank", "2",
                 "--out", str(tmp_path / "extracted.safetensors"), "--quiet"]) == 0
    assert read_adapter_safetensors(tmp_path / "extracted.safetensors", tensors=False)[0]["wadi.rank"] == "2"


def test_a_revision_after_at_names_a_branch_tag_or_commit(offline, tmp_path):
    """``owner/name@REVISION`` as huggingface_hub's file system writes it: the main branch without one."""
    old, new = "1" * 40, "2" * 40
    for commit, ref, value in ((old, "v1.0", 1.0), (new, "main", 2.0)):
        files = tmp_path / ref
        files.mkdir()
        save_file({"w": torch.full((2,), value)}, str(files / "unet.safetensors"))
        write_hub_cache(offline[1], "wadi-test/revisions", files, commit, ref)
    for revision, value in (("", 2.0), ("@main", 2.0), ("@v1.0", 1.0), (f"@{old}", 1.0)):
        name = f"wadi-test/revisions{revision}/unet.safetensors"
        assert load_file(hub.local_path(name))["w"].tolist() == [value, value], name
    assert Path(hub.local_path(f"{REPO}@main")) == offline[2]
    with pytest.raises(hub.HubError, match=re.escape(f"{REPO}@v9 is not a file or folder here, and the Hugging Face "
                                                     "Hub could not give it")):
        hub.local_path(f"{REPO}@v9")


def test_with_a_replacement_unet_a_hub_pipelines_own_unet_weights_are_not_downloaded(model, tmp_path, monkeypatch):
    """The README's command for the authors' weights (``--model ID --unet FILE``): the download of the pipeline
    (through huggingface_hub's own file filter, here over the tiny model's files) leaves out the UNet's weights
    and keeps its configuration, and the model draws from what came."""
    import shutil

    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    folder = model[0]
    listing = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    fetched = []

    def snapshot_download(repo_id, allow_patterns=None, ignore_patterns=None, **_):
        files = list(filter_repo_objects(listing, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        fetched.append(set(files))
        snapshot = tmp_path / "snapshot" / str(len(fetched))
        for name in files:
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / name, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    forget()
    unet = tmp_path / "rotated_unet.safetensors"
    save_file({k: v.contiguous() for k, v in load_components(folder).unet.state_dict().items()}, str(unet))
    assert main(["generate", "--model", REPO, "--unet", str(unet), "--one-step", "--prompt", "a red circle",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert fetched == [set(listing) - {"unet/diffusion_pytorch_model.safetensors"}]
    assert "unet/config.json" in fetched[0]
    forget()


@pytest.mark.parametrize("words, missing", [
    (["generate", "--model", "nobody/no-model", "--prompt", "x"], "nobody/no-model is not a file or folder here"),
    (["distill", "--model", "nobody/no-model", "--steps", "1"], "nobody/no-model is not a file or folder here"),
    (["generate", "--unet", "nobody/released/unet.safetensors", "--one-step", "--prompt", "x"],
     "nobody/released/unet.safetensors is not a file here"),
], ids=["generate", "distill", "unet-file"])
def test_a_hub_name_that_is_not_cached_offline_is_one_message_and_nothing_written(offline, tmp_path, capsys, words,
                                                                                  missing):
    out = tmp_path / "out"
    assert main([*words, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"wadi {words[0]}: error: {missing}, and the Hugging Face Hub could not give it" in err
    assert "run the command once where there is a network and copy its Hub cache (HF_HOME) here" in err
    assert not out.exists()


@pytest.mark.parametrize("error, name, message", [
    ("RepositoryNotFoundError", "owner/typo", ("owner/typo is not a file or folder here, and the Hugging Face Hub has "
                                               "no model owner/typo (or it is private: log in with hf auth login); "
                                               "check the path or the id")),
    ("GatedRepoError", "owner/typo", ("owner/typo is gated on the Hugging Face Hub: accept its licence on its page, "
                                      "then log in (hf auth login) or set HF_TOKEN")),
    ("RemoteEntryNotFoundError", "owner/name/unet.safetensors", (
        "owner/name/unet.safetensors is not a file here, and owner/name on the Hugging Face Hub has no file "
        "unet.safetensors; check the file's path in the repository")),
    ("RevisionNotFoundError", "owner/name@v2", ("owner/name@v2 is not a file or folder here, and owner/name on the "
                                                "Hugging Face Hub has no revision v2; check the branch, tag or commit "
                                                "after @")),
], ids=["not-found", "gated", "no-such-file", "no-such-revision"])
def test_what_the_hub_refuses_is_said_with_its_fix(monkeypatch, error, name, message):
    import huggingface_hub
    from huggingface_hub import errors

    def refuse(repo_id, *_, **__):
        response = SimpleNamespace(headers={}, request=None)  # what huggingface_hub's HTTP errors keep of one
        raise getattr(errors, error)(f"{repo_id}: 404", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    forget()
    with pytest.raises(hub.HubError, match=re.escape(message)):
        hub.local_path(name)


def test_a_hub_model_that_is_not_a_pipeline_is_refused(monkeypatch, tmp_path):
    import huggingface_hub

    (tmp_path / "unet").mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **_: str(tmp_path))
    forget()
    with pytest.raises(hub.HubError, match="owner/a-lora on the Hugging Face Hub is not a diffusers pipeline"):
        hub.local_path("owner/a-lora")


@pytest.mark.parametrize("text, name", [
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", ("stable-diffusion-v1-5/stable-diffusion-v1-5", None, None)),
    ("gudaochangsheng/WaDi/rotated_unet-sdv1-5.safetensors",
     ("gudaochangsheng/WaDi", "rotated_unet-sdv1-5.safetensors", None)),
    ("owner/name/unet/diffusion_pytorch_model.safetensors",
     ("owner/name", "unet/diffusion_pytorch_model.safetensors", None)),
    ("owner/name@v1.0", ("owner/name", None, "v1.0")),
    ("owner/name@0a1b/x.safetensors", ("owner/name", "x.safetensors", "0a1b")),
    ("owner/name@/x.safetensors", None), ("owner@v1/name", None), ("owner/name@a@b", None),
    ("owner/model.safetensors", None), ("owner/name/model.ckpt", None), ("/abs/folder", None), ("./owner/name", None),
    ("owner/..", None), ("owner/name/../x.safetensors", None), ("C:/models/sd", None), ("no-slash", None),
])
def test_what_reads_as_a_name_on_the_hub(text, name):
    assert hub.hub_name(text) == name


def test_an_existing_folder_named_like_an_id_is_the_folder(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").symlink_to(model[0])
    assert not hub.is_hub_name("owner/name") and hub.local_path("owner/name") == "owner/name"


# repository listings shaped like the Hub's SD1.5, SDXL and PixArt-alpha pipelines: each part's weights in several
# formats and precisions, single-file checkpoints, a safety checker, ONNX / OpenVINO exports
TOKENIZER = ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
WEIGHTS = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
           "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin", "config.json"]
CLIP = ["model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "config.json"]
SD15 = ["model_index.json", "README.md", ".gitattributes", "v1-5-pruned.safetensors", "v1-5-pruned-emaonly.ckpt",
        "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json",
        *(f"safety_checker/{f}" for f in CLIP), *(f"text_encoder/{f}" for f in CLIP),
        *(f"tokenizer/{f}" for f in TOKENIZER), *(f"unet/{f}" for f in WEIGHTS),
        "unet/diffusion_pytorch_model.non_ema.safetensors", *(f"vae/{f}" for f in WEIGHTS)]
SDXL = [*(f for f in SD15 if not f.startswith(("safety_checker", "feature_extractor", "v1-5"))),
        "sd_xl_base_1.0.safetensors", *(f"text_encoder_2/{f}" for f in CLIP), *(f"tokenizer_2/{f}" for f in TOKENIZER),
        "unet/model.onnx", "unet/model.onnx_data", "text_encoder/openvino_model.bin",
        "text_encoder/openvino_model.xml", "vae_1_0/diffusion_pytorch_model.safetensors", "vae_decoder/model.onnx"]
PIXART = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
          *(f"text_encoder/model-0000{i}-of-00004.safetensors" for i in range(1, 5)),
          "text_encoder/model.safetensors.index.json", "text_encoder/pytorch_model-00001-of-00002.bin",
          "tokenizer/spiece.model", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
          "tokenizer/added_tokens.json", *(f"transformer/{f}" for f in WEIGHTS), *(f"vae/{f}" for f in WEIGHTS)]


def downloaded(listing: list[str]) -> set[str]:
    from huggingface_hub.utils import filter_repo_objects

    return set(filter_repo_objects(listing, allow_patterns=hub.ALLOW_PATTERNS, ignore_patterns=hub.IGNORE_PATTERNS))


def test_a_download_takes_the_files_the_loaders_read_and_no_others():
    sd15 = {*components.REQUIRED_FILES, *(f"tokenizer/{f}" for f in TOKENIZER)}
    assert downloaded(SD15) == sd15
    assert downloaded(SDXL) == sd15 | {f"text_encoder_2/{f}" for f in ("model.safetensors", "config.json")} | \
        {f"tokenizer_2/{f}" for f in TOKENIZER}
    assert downloaded(PIXART) == {f for f in PIXART if f.endswith((".json", ".model")) or
                                  (f.endswith(".safetensors") and "fp16" not in f)}


# openai/clip-vit-large-patch14's files: the model in three frameworks, and its tokenizer
CLIP_REPOSITORY = [".gitattributes", "README.md", "config.json", "flax_model.msgpack", "merges.txt",
                   "model.safetensors", "preprocessor_config.json", "pytorch_model.bin", "special_tokens_map.json",
                   "tf_model.h5", "tokenizer.json", "tokenizer_config.json", "vocab.json"]


@pytest.fixture
def no_tokenizer_here(monkeypatch, tmp_path):
    """A single file with no tokenizer/ beside it, no host's copy, CLIP's repository named ``wadi-test/clip``, and
    the Hub's cache empty."""
    from huggingface_hub import constants

    from wadi_core.models import single_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(single_file, "CLIP_REPO", "wadi-test/clip")
    monkeypatch.setattr(single_file, "TOKENIZER_FOLDERS", [])
    forget()
    yield tmp_path / "models" / "sd15.safetensors"
    forget()


def test_a_single_file_takes_clips_tokenizer_from_the_hub_cache(no_tokenizer_here, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from wadi_core.models.single_file import find_tokenizer
    from wadi_core.shapes.components import write_tokenizer

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    vocabulary = write_tokenizer(tmp_path / "clip")
    write_hub_cache(tmp_path / "cache", "wadi-test/clip", vocabulary)
    for pad in ("<|endoftext|>", "!"):  # CLIP's padding, and OpenCLIP's (SD2.x, SDXL's second encoder)
        tokenizer = find_tokenizer(no_tokenizer_here, pad)
        assert tokenizer.get_vocab() == json.loads((vocabulary / "vocab.json").read_text())
        assert tokenizer.pad_token == pad and tokenizer.model_max_length == 77


def test_a_single_file_downloads_only_clips_tokenizer_files_when_they_are_not_cached(no_tokenizer_here, tmp_path,
                                                                                    monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    from wadi_core.models.single_file import find_tokenizer
    from wadi_core.shapes.components import write_tokenizer

    calls = []

    def snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **_):
        calls.append((repo_id, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        fetched = set(filter_repo_objects(CLIP_REPOSITORY, allow_patterns=allow_patterns))
        assert fetched == {"merges.txt", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                           "vocab.json"}
        return str(write_tokenizer(tmp_path / "fetched"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert len(find_tokenizer(no_tokenizer_here)) == len(find_tokenizer(no_tokenizer_here, "!"))
    assert calls == [("wadi-test/clip", True), ("wadi-test/clip", False)]  # the cache first; the Hub once


def test_a_single_file_without_any_tokenizer_offline_says_both_fixes(no_tokenizer_here, monkeypatch):
    from huggingface_hub import constants

    from wadi_core.models import CheckpointError
    from wadi_core.models.single_file import find_tokenizer

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError) as err:
        find_tokenizer(no_tokenizer_here)
    beside = no_tokenizer_here.parent / "tokenizer"
    assert str(err.value).startswith(f"{no_tokenizer_here} has no tokenizer (single files never do), and CLIP's "
                                     "(wadi-test/clip) is neither in the Hugging Face cache nor could it be fetched ("
                                     ) and "LocalEntryNotFoundError" in str(err.value)
    assert str(err.value).endswith(f"put a CLIP tokenizer folder (the tokenizer/ of any diffusers SD1.x, SD2.x or SDXL "
                                   f"copy) at {beside}, or run once where the Hugging Face Hub can be reached (a few "
                                   "MB)")
