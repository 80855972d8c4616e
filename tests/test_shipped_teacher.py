"""The shipped embedded teacher: complete, small, loadable like SD, and it draws what it is asked.

Thresholds sit well below the accuracy measured in docs/lab/shapes.md, and far above what an
untrained or broken model reaches (about 1/6 for colour, 1/3 for shape)."""

import pytest
import torch

from wadi_core.sampling import sample
from wadi_core.shapes import accuracy_report, prompts_of
from wadi_core.models import load_components
from wadi_core.models.components import REQUIRED_FILES
from wadi_core.shapes.components import MODEL_DIR

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "model_index.json").is_file(),
                                reason="the embedded teacher is not shipped in this checkout")


def test_shipped_model_is_complete_and_small():
    assert all((MODEL_DIR / name).is_file() for name in REQUIRED_FILES)
    total = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    features = MODEL_DIR.parent / "features.safetensors"
    assert total + features.stat().st_size <= 20 * 2**20


def test_shipped_teacher_follows_colour_and_shape():
    c = load_components()
    prompts = [p.caption() for p in prompts_of("heldout", "single")][:32]
    images = sample(c, prompts, seeds=range(32), steps=15, guidance=3.0, progress=False)
    report = accuracy_report(images, prompts)
    assert report["single/color"] >= 0.75 and report["single/shape"] >= 0.6, report


def test_loads_with_the_stable_diffusion_pipeline():
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL_DIR), torch_dtype=torch.float32)
    assert pipe(["a red circle"], num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)
