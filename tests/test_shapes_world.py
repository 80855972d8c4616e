"""The shapes world: renderer, captions, splits, prompt files and the judge."""

import numpy as np
import pytest
from PIL import ImageFilter

from wadi_core.prompts import PromptFileError, read_prompts, write_prompts
from wadi_core.shapes import (NotJudgeable, accuracy_report, judge, parse_prompt, render, render_batch,
                              sample_prompts, sample_scenes, scene_for_prompt, vocabulary)
from wadi_core.shapes.dataset import all_prompts, prompts_of
from wadi_core.shapes.world import COLORS, RELATIONS, SHAPES, Prompt


def test_rendering_is_deterministic_per_seed():
    a, b, c = (sample_scenes(16, "train", seed=s) for s in (7, 7, 8))
    assert [s.caption for s in a] == [s.caption for s in b] != [s.caption for s in c]
    assert np.array_equal(render_batch(a), render_batch(b))
    assert render_batch(a).shape == (16, 32, 32, 3)


def test_captions_follow_the_grammar_and_parse_back():
    for kind in ("single", "relation"):
        for prompt in all_prompts(kind):
            assert parse_prompt(prompt.caption()) == prompt
    assert Prompt((("red", "circle"),)).caption() == "a red circle"
    assert Prompt((("blue", "square"),), size="small", position="top left").caption() == \
        "a small blue square at the top left"
    assert Prompt((("green", "triangle"), ("yellow", "circle")), relation="left of").caption() == \
        "a green triangle left of a yellow circle"
    assert Prompt((("orange", "circle"),)).caption() == "an orange circle"
    assert set(vocabulary()) >= {"red", "circle", "left", "above", "small", "an"}


def test_heldout_compositions_never_occur_in_training():
    for kind in ("single", "relation"):
        train = {p.caption() for p in prompts_of("train", kind)}
        heldout = {p.caption() for p in prompts_of("heldout", kind)}
        assert heldout and not train & heldout
        assert 0.05 < len(heldout) / (len(train) + len(heldout)) < 0.15
    train_words = {w for p in prompts_of("train", "single") + prompts_of("train", "relation")
                   for w in p.caption().split()}
    assert set(COLORS) | set(SHAPES) | {"left", "right", "above", "below", "small", "large"} <= train_words
    assert {s.caption for s in sample_scenes(200, "heldout", seed=1)} <= \
        {p.caption() for k in ("single", "relation") for p in prompts_of("heldout", k)}


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_judge_is_at_least_99_percent_right_on_fresh_renders(split):
    scenes = sample_scenes(600, split, seed=11)
    report = accuracy_report(render_batch(scenes), [s.caption for s in scenes])
    assert report["judged"] == 600 and report["not_judgeable"] == 0
    assert report["all"] >= 0.99, report
    assert all(report[k] >= 0.99 for k in ("color", "shape", "size", "position", "relation")), report


def test_judge_tolerates_mild_blur_and_noise():
    scenes = sample_scenes(300, "train", seed=12)
    rng = np.random.default_rng(0)
    images = [np.clip(np.asarray(render(s).filter(ImageFilter.GaussianBlur(0.5)), dtype=np.float32)
                      + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8) for s in scenes]
    assert accuracy_report(images, [s.caption for s in scenes])["all"] >= 0.97


def test_judge_catches_wrong_images():
    rng = np.random.default_rng(3)
    asked = parse_prompt("a small blue square at the top left")
    cases = {
        "color": Prompt((("red", "square"),), size="small", position="top left"),
        "shape": Prompt((("blue", "circle"),), size="small", position="top left"),
        "size": Prompt((("blue", "square"),), size="large", position="top left"),
        "position": Prompt((("blue", "square"),), size="small", position="bottom right"),
    }
    for attribute, shown in cases.items():
        verdict = judge(render(scene_for_prompt(shown, rng)), asked)
        assert not verdict.checks[attribute] and not verdict.correct
        assert all(ok for key, ok in verdict.checks.items() if key != attribute)
    relation = parse_prompt("a green triangle left of a yellow circle")
    for shown, wrong in (("a green triangle right of a yellow circle", "relation"),
                         ("a green square left of a yellow circle", "shape"),
                         ("a green triangle left of a red circle", "color")):
        verdict = judge(render(scene_for_prompt(parse_prompt(shown), rng)), relation)
        assert not verdict.checks[wrong]
    # The other side of the same axis: the axis is right, the relation is not.
    flipped = judge(render(scene_for_prompt(parse_prompt("a green triangle right of a yellow circle"), rng)), relation)
    assert flipped.checks["axis"] and not flipped.checks["relation"]
    crossed = judge(render(scene_for_prompt(parse_prompt("a green triangle above a yellow circle"), rng)), relation)
    assert not crossed.checks["axis"] and not crossed.checks["relation"]


def test_unknown_words_are_not_judgeable():
    with pytest.raises(NotJudgeable, match="unknown colour 'pink'"):
        parse_prompt("a pink circle")
    with pytest.raises(NotJudgeable, match="unknown shape 'hexagon'"):
        parse_prompt("a red hexagon")
    with pytest.raises(NotJudgeable, match="not a prompt of the shapes world"):
        parse_prompt("a photo of an astronaut riding a horse")
    image = render(scene_for_prompt(parse_prompt("a red circle"), np.random.default_rng(0)))
    report = accuracy_report([image, image], ["a red circle", "a pink circle"])
    assert report["judged"] == 1 and report["not_judgeable"] == 1


def test_sample_prompts_mixes_kinds_from_one_split():
    prompts = sample_prompts(200, "heldout", seed=0)
    assert {p.kind for p in prompts} == {"single", "relation"}
    assert {p.relation for p in prompts if p.relation} <= set(RELATIONS)


def test_prompt_files(tmp_path):
    path = write_prompts(tmp_path / "p.txt", ["a red circle", "a blue square"])
    assert read_prompts(path) == ["a red circle", "a blue square"]
    with pytest.raises(FileExistsError):
        write_prompts(path, ["x"])
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"caption": "a red circle"}\n\n{"prompt": "a green square"}\n')
    assert read_prompts(jsonl) == ["a red circle", "a green square"]
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(PromptFileError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"caption": 3}\n')
    with pytest.raises(PromptFileError, match="no 'caption' field"):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(PromptFileError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_attribute_confusion_counts_hits_and_what_is_drawn_instead():
    import runpy
    from pathlib import Path
    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "research" / "attribute_confusion.py"))
    prompts = ["a red circle", "an orange square", "a blue triangle left of a red circle"]
    rng = np.random.default_rng(0)
    renders = render_batch([scene_for_prompt(parse_prompt(p), rng) for p in prompts])
    verdicts = script["judged"](renders, prompts)
    table = script["confusion"](verdicts)
    assert table["color"] == {"red": {"red": 1}, "orange": {"orange": 1}}  # relation prompts are left out
    swapped = script["confusion"](script["judged"](renders[[1, 0]], prompts[:2]))  # each image under the other's prompt
    assert swapped["color"] == {"red": {"orange": 1}, "orange": {"red": 1}}
    assert swapped["shape"] == {"circle": {"square": 1}, "square": {"circle": 1}}
    assert "orange     0/1" in script["report"](swapped)
    fills = script["fill_report"](verdicts)  # a rendered square fills its box, a circle about pi/4 of it
    median = {line.split()[0]: float(line.split()[1]) for line in fills.splitlines()[1:]}
    assert median["square"] > 0.84 > median["circle"] > 0.7
    grid = script["shape_grid"](verdicts, "square")  # one labelled cell: the single-object square prompt
    assert grid.width == 8 * 128
