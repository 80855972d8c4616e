"""Named recipes: the hyper-parameters a distillation takes when its options leave them open.

A recipe follows the teacher's *family*, recognised from its weights (``wadi_core.models.families``), never its
path: a copied or renamed embedded model keeps its recipe and any SD1.5 folder gets the paper's. ``--recipe``
overrides the choice. This module imports nothing heavy, so that a UI can read the tables before torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    name: str
    about: str
    student_rank: int
    fake_rank: int
    # learning rates by network and adapter kind: LoRaD's angles take larger steps than additive LoRA/DoRA
    # factors or raw weights; a kind missing here takes the role's "lorad" rate
    lr: dict[str, dict[str, float]]
    guidance: float  # CFG of the teacher (and, with fake_guidance None, of the fake model) in the VSD gradient
    fake_guidance: float | None
    batch_size: int  # the whole batch: under N processes each takes batch_size / N (--batch-size is per process)
    steps: int
    fake_updates: int
    ema: float
    late_fraction: float
    late_t_max: int | None
    sample_guidance: float  # the teacher's CFG in the sample grids
    measured: str = ""
    families: tuple[str, ...] = field(default=())

    def learning_rate(self, role: str, kind: str) -> float:
        """The rate of the ``role`` network ("student" or "fake") trained as adapter ``kind``."""
        rates = self.lr[role]
        return rates.get(kind, rates["lorad"])


PAPER = Recipe(
    name="paper", about="the paper's values for SD1.5, SD2.1 and PixArt-alpha (unmeasured here: no GPU)",
    student_rank=256, fake_rank=32,
    # DMD2's rate for a fully trained SD1.5 UNet; LoRA and DoRA keep LoRaD's (not measured on SD)
    lr={"student": {"lorad": 1e-4, "full": 1e-5}, "fake": {"lorad": 1e-2, "full": 1e-5}},
    guidance=1.5, fake_guidance=None, batch_size=128, steps=20000, fake_updates=1, ema=0.0, late_fraction=0.0,
    late_t_max=None, sample_guidance=7.5, families=("sd15", "sd21", "pixart-alpha"),
    measured="the paper (WaDi, CVPR 2026) and its authors' training script")

# The embedded world's budget is 15 CPU minutes. Measured on it (docs/lab/results.md): three fake updates per student
# step over 600 steps beat one over 900 in the same time; an EMA of the student (0.99) lowered FID by a fifth in
# two seeds; an unguided fake model with the teacher at CFG 2 raised shape accuracy by 11-12 points in two seeds
# with FID under 2x the teacher's; 800 steps whose last 300 draw the gradient's timesteps from t <= 400 (colour is
# decided at low noise) beat 600 full-range steps on colour, position and FID. Students' rates of the other kinds:
# the adapter ablation; fake models': the fake-kind runs.
SHAPES = Recipe(
    name="shapes", about="the embedded shapes world's measured defaults (15 minutes on a 2-core CPU)",
    student_rank=24, fake_rank=8,
    lr={"student": {"lorad": 5e-3, "lora": 1e-3, "dora": 1e-3, "full": 1e-4},
        "fake": {"lorad": 1e-2, "lora": 3e-3, "dora": 3e-3, "full": 5e-4}},
    guidance=2.0, fake_guidance=1.0, batch_size=16, steps=800, fake_updates=3, ema=0.99, late_fraction=0.375,
    late_t_max=400, sample_guidance=3.0, families=("shapes",),
    measured="docs/lab/results.md (the demo's recipe and the adapter ablation)")

# Not run here (no GPU): DMD2's SDXL scripts (experiments/sdxl in tianweiy/DMD2) train with the teacher at CFG 8 and an
# unguided fake model, five fake updates per generator step, 2 images on each of 64 GPUs, their full UNet at 5e-7
# and their LoRA at 5e-5; LoRaD keeps the paper's rates (angles take larger steps than additive factors) and the
# rank whose share of the UNet is near the paper's 10% (docs/lorad.md).
SDXL = Recipe(
    name="sdxl", about="values chosen from DMD2's SDXL recipe with the paper's LoRaD rates (unmeasured: no SDXL run)",
    student_rank=128, fake_rank=32,
    lr={"student": {"lorad": 1e-4, "lora": 5e-5, "dora": 5e-5, "full": 5e-7},
        "fake": {"lorad": 1e-2, "lora": 5e-5, "dora": 5e-5, "full": 5e-7}},
    guidance=8.0, fake_guidance=1.0, batch_size=128, steps=20000, fake_updates=5, ema=0.0, late_fraction=0.0,
    late_t_max=None, sample_guidance=5.0, families=("sdxl",),
    measured="not measured: DMD2's SDXL training scripts and the paper's LoRaD rates")

RECIPES = {recipe.name: recipe for recipe in (PAPER, SHAPES, SDXL)}


def recipe_for_family(family: str) -> Recipe:
    """The recipe of a family; an unknown family gets the paper's (the closest measured reference)."""
    return next((r for r in RECIPES.values() if family in r.families), PAPER)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_for_model(path, name: str | None = None) -> Recipe:
    """``name``'s recipe, or the one of the model's family."""
    from ..models import family_of_path
    return get_recipe(name) if name else recipe_for_family(family_of_path(path))
