"""The embedded default world: a procedurally rendered "shapes" world with captions, seeded
train / held-out splits, and an exact judge of colour, shape, size, position and relation."""

from .dataset import prompts_of, render_batch, sample_prompts, sample_scenes, split_of
from .judge import accuracy_report, detect_objects, judge
from .render import render, scene_for_prompt
from .world import IMAGE_SIZE, NotJudgeable, Prompt, Scene, Shape, parse_prompt, vocabulary

__all__ = ["prompts_of", "render_batch", "sample_prompts", "sample_scenes", "split_of",
           "accuracy_report", "detect_objects", "judge", "render", "scene_for_prompt",
           "IMAGE_SIZE", "NotJudgeable", "Prompt", "Scene", "Shape", "parse_prompt", "vocabulary"]
