"""Above the training resolution: the student's one step on a larger latent, image-to-image DDIM
refinement, the two-stage route, and ``wadi highres``."""

from __future__ import annotations

import numpy as np
import pytest

from wadi_cli.cli import main
from wadi_core.sampling import highres, onestep
from wadi_core.sampling import sample
from wadi_core.models import encode, load_components


def test_one_step_and_multi_step_draw_at_twice_the_size(sd_dir):
    c = load_components(sd_dir)
    base = onestep.generate(c, ["a red circle"], [0], progress=False)
    assert onestep.generate(c, ["a red circle"], [0], progress=False, scale=2).shape[1] == 2 * base.shape[1]
    assert sample(c, ["a red circle"], [0], steps=2, progress=False, scale=2).shape[1] == 2 * base.shape[1]


def test_refinement_starts_from_the_given_image(sd_dir):
    c = load_components(sd_dir)
    images = onestep.generate(c, ["a red circle", "a blue square"], [0, 1], progress=False)
    latents = encode(c, images)
    light = sample(c, ["a red circle", "a blue square"], [5, 6], steps=10, strength=0.1, init_latents=latents,
                   progress=False)
    heavy = sample(c, ["a red circle", "a blue square"], [5, 6], steps=10, strength=1.0, init_latents=latents,
                   progress=False)
    from wadi_core.models import decode
    start = decode(c, latents)  # what the refinement starts from, before any noise
    closeness = [np.abs(x.astype(int) - start.astype(int)).mean() for x in (light, heavy)]
    assert closeness[0] < closeness[1]  # a light refinement keeps more of the input
    with pytest.raises(ValueError, match="ddim"):
        sample(c, ["a red circle"], [0], sampler="euler", init_latents=latents[:1], strength=0.5)


def test_two_stage_route_and_command(tmp_path, sd_dir):
    from wadi_core import students
    c = load_components(sd_dir)
    images = highres.two_stage(c, load_components(sd_dir), ["a red circle"], [0], scale=2, strength=0.2, steps=5)
    assert images.shape[1] == 2 * c.unet.config.sample_size * 2  # tiny VAE: factor 2
    spec = students.AdapterSpec("lorad", 2, "unet-student")
    students.add_adapter(c.unet, spec)
    adapter = students.save_adapter_file(c.unet, spec, tmp_path / "student.safetensors")
    for route in ("one-step", "two-stage"):
        out = tmp_path / route
        assert main(["highres", "--model", str(sd_dir), "--student", str(adapter), "--prompt", "a red circle",
                     "--route", route, "--refine-steps", "4", "--out", str(out)]) == 0
        assert (out / "grid.png").is_file()
    assert main(["highres", "--model", str(sd_dir), "--student", str(adapter), "--out", str(tmp_path / "x")]) == 2
