"""The settings of a distillation run, nested by what they are about.

Each field declares once how a resumed run treats it: ``MATCH`` (the checkpoint's value must be this run's, or
the resume is refused by name), ``MAY_CHANGE`` (a resumed run may change it, and its log says so: the way out of
a divergence is to resume the last good checkpoint at lower rates or without mixed precision) or ``FREE``
(where the run writes and how often, how long it runs). A field left ``None`` takes its value from the
recipe (:mod:`wadi_core.distill.recipes`) in :meth:`DistillConfig.resolved`.

The command line, the web UI and the tests speak in flat *options* (``student_rank``, ``lr_fake``,
``gan_weight``: the ``wadi distill`` flags without their dashes); :data:`OPTIONS` maps each to its field.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from ..choices import ADAPTER_KINDS as KINDS
from .recipes import Recipe, recipe_for_model

MATCH, MAY_CHANGE, FREE = "match", "may change", "free"
GRADIENT_MODES = ("wadi", "dmd2")
LR_SCHEDULES = ("constant", "cosine", "linear")
GAN_FEATURES = ("mid", "last")
PRECISIONS = ("no", "fp16", "bf16")


def setting(default: Any = None, resume: str = MATCH, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"resume": resume})
    return field(default=default, metadata={"resume": resume})


def absolute(path: str) -> str:
    """An absolute path, so that a resumed run finds its files from any folder; a name on the Hugging Face Hub
    stays the name (the Hub's cache finds it on every machine)."""
    from ..models.hub import is_hub_name

    return path if is_hub_name(path) else str(Path(path).expanduser().resolve())


@dataclass
class Network:
    """One trained network (the student or the fake score model): adapter kind, rank, layers, learning rate."""

    kind: str = setting("lorad")
    rank: int | None = setting(None)  # None: the recipe's; unused by "full"
    preset: str = setting("unet-student")
    lr: float | None = setting(None, MAY_CHANGE)  # None: the recipe's rate for this kind


@dataclass
class Timesteps:
    """The timesteps of the VSD gradient: uniform in [t_min, t_max] (inclusive; the spec's range), and for the
    last ``late_fraction`` of the steps up to ``late_t_max`` only. Colour is decided at low noise, layout at high
    noise, so a late low-noise phase refines colour once the layout is learnt."""

    t_min: int = setting(20)
    t_max: int = setting(980)
    late_fraction: float | None = setting(None)  # None: the recipe's; 0 = off
    late_t_max: int | None = setting(None)


@dataclass
class Regression:
    """DMD's regression loss (not WaDi; off at 0 pairs): the teacher's multi-step latents for ``pairs``
    (noise, prompt) pairs, made before training; a quarter of each batch is drawn from them and its one-step x0
    is also pulled toward the teacher's latent by ``weight`` x MSE."""

    pairs: int = setting(0)
    weight: float = setting(0.25)


@dataclass
class Gan:
    """DMD2's GAN term (not WaDi; off at weight 0): a head on the fake model's features (``features``: mid, its
    middle block as in DMD2; last, its last up block) tells noised real latents from noised student latents.
    Real images: the world's renders of each batch's prompts, else ``images`` (captions in same-named .txt)."""

    weight: float = setting(0.0)
    disc_weight: float = setting(0.01)  # the discriminator loss weight inside the fake model's update
    images: str | None = setting(None)
    head_lr: float = setting(1e-3)
    features: str = setting("mid")


@dataclass
class Extras:
    """Terms that are not WaDi's, each off by default."""

    regression: Regression = setting(resume=MATCH, factory=Regression)
    gan: Gan = setting(resume=MATCH, factory=Gan)


@dataclass
class DistillConfig:
    out: str = setting("", FREE)
    model: str | None = setting(None)  # the teacher; None: the embedded shapes model
    backbone: str | None = setting(None)  # a state dict that replaces the teacher's whole UNet / DiT
    prompts: str | None = setting(None)  # None: the world's training prompts (the embedded world has them)
    recipe: str | None = setting(None)  # None: the recipe of the teacher's family
    student: Network = setting(factory=lambda: Network(preset="unet-student"))
    fake: Network = setting(factory=lambda: Network(preset="unet-fake"))
    steps: int | None = setting(None, FREE)
    batch_size: int | None = setting(None)  # prompts per micro-batch and process
    grad_accum: int = setting(1)
    fake_updates: int | None = setting(None)  # fake-model steps per student step (paper 1, DMD2 5)
    # CFG of teacher and fake inside the VSD gradient, and of the fake alone (None: the teacher's, as in the paper's
    # script). With CFG on both the gradient vanishes when the student matches the teacher's *unguided*
    # distribution; with 1 for the fake (DMD, DMD2) its target is the guided one the teacher's samples come from.
    guidance: float | None = setting(None)
    fake_guidance: float | None = setting(None)
    gradient_mode: str = setting("wadi")
    timesteps: Timesteps = setting(factory=Timesteps)
    null_prompt_share: float = setting(0.1)  # empty prompts in the fake model's loss
    # both networks' rates follow the schedule, so the fake model's pace keeps its ratio to the student's
    lr_schedule: str = setting("constant")  # constant | cosine | linear (to 0 at the last step), after lr_warmup
    lr_warmup: int = setting(0)
    ema: float | None = setting(None)  # 0 = off; else the decay of an EMA of the student's trainable weights
    seed: int = setting(0)
    mixed_precision: str = setting("no", MAY_CHANGE)
    gradient_checkpointing: bool = setting(False, FREE)
    # student and fake as two adapters on the teacher's one frozen backbone (adapter kinds) or, for comparison and
    # for "full", their own copies; the results are the same (tests/test_shared_base.py), the memory is not
    separate_copies: bool = setting(False, FREE)
    # AdamW's moments and a copy of the trained weights in host memory, stepped there (offload.py); the same results
    offload_optimizer: bool = setting(False, FREE)
    extras: Extras = setting(factory=Extras)
    checkpoint_every: int = setting(100, FREE)
    student_every: int = setting(0, FREE)  # steps between the students kept in students/ (0: only the final one)
    sample_every: int = setting(100, FREE)
    sample_guidance: float | None = setting(None, FREE)  # the teacher's CFG in the sample grids
    max_bad_steps: int = setting(10, FREE)  # stop after this many consecutive non-finite steps
    export_merged: str | None = setting(None, FREE)
    overwrite: bool = setting(False, FREE)
    resume: bool = setting(False, FREE)
    report_to: str = setting("tensorboard", FREE)  # or "none"

    # ----- flat options

    @classmethod
    def from_options(cls, **options) -> "DistillConfig":
        """A config from flat options (the ``wadi distill`` flags without dashes, old spellings included)."""
        config = cls()
        for name, value in options.items():
            path = OPTIONS.get(OLD_OPTIONS.get(name, name))
            if path is None:
                raise TypeError(f"unknown distillation option '{name}'")
            config = _set(config, path, value)
        return config

    def options(self) -> dict[str, Any]:
        return {name: _get(self, path) for name, path in OPTIONS.items()}

    def rule(self, option: str) -> str:
        """How a resumed run treats ``option``: MATCH, MAY_CHANGE or FREE."""
        return _rule(type(self), OPTIONS[option])

    # ----- defaults and checks

    def resolved(self, recipe: Recipe | str | None = None, processes: int = 1) -> "DistillConfig":
        """A copy with the teacher's path made absolute (a Hub name stays the name) and every None filled from
        ``recipe`` (a name or a recipe; default: this config's ``recipe``, else the recipe of the teacher's family).
        A recipe's batch is the whole batch: each of ``processes`` processes takes its share."""
        from ..models.components import is_dit_folder
        from ..models.hub import local_path

        model = absolute(self.model) if self.model else str(default_model())
        if isinstance(recipe, str) or recipe is None:
            recipe = recipe_for_model(model, recipe or self.recipe)
        options = self.options()
        options.update(model=model, recipe=recipe.name)
        for role in ("student", "fake"):
            kind = options[f"{role}_kind"]
            if options[f"lr_{role}"] is None:
                options[f"lr_{role}"] = recipe.learning_rate(role, kind)
            if options[f"{role}_rank"] is None:
                options[f"{role}_rank"] = getattr(recipe, f"{role}_rank")
            if is_dit_folder(local_path(model)) and options[f"{role}_preset"].startswith("unet-"):
                options[f"{role}_preset"] = options[f"{role}_preset"].replace("unet-", "dit-", 1)  # DiT presets
        if options["batch_size"] is None:  # the recipe's whole batch, split over processes and micro-batches
            parts = processes * options["grad_accum"]
            if recipe.batch_size % parts:
                over = []
                if processes > 1:
                    over.append(f"{processes} processes")
                if options["grad_accum"] > 1:
                    over.append(f"{options['grad_accum']} micro-batches (--grad-accum)")
                raise ValueError(f"the {recipe.name} recipe's batch of {recipe.batch_size} prompts does not split over "
                                 f"{' x '.join(over)}; give each micro-batch its share with --batch-size N")
            options["batch_size"] = recipe.batch_size // parts
        for name in ("guidance", "fake_guidance", "steps", "fake_updates", "ema", "late_fraction", "late_t_max",
                     "sample_guidance"):
            if options[name] is None:
                options[name] = getattr(recipe, name)
        if not options["late_fraction"]:  # no late phase: its top timestep means nothing
            if self.timesteps.late_t_max is not None:
                raise ValueError("--late-t-max needs --late-fraction F (more than 0), the share of the last steps "
                                 "it applies to")
            options["late_t_max"] = None
        for name in ("prompts", "gan_images", "backbone"):
            if options[name]:
                options[name] = absolute(options[name])
        return DistillConfig.from_options(**options)

    def check(self) -> None:
        """Refuse impossible settings with the flag to change; call on a :meth:`resolved` config."""
        options = self.options()
        for name, value in options.items():  # NaN passes every comparison below, so refuse non-finite numbers first
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{flag(name)} must be a finite number, not {value}")
        t = self.timesteps
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("--batch-size and --grad-accum must be at least 1")
        if self.fake_updates < 1:
            raise ValueError("--fake-updates must be at least 1")
        choices = (("gradient_mode", GRADIENT_MODES), ("lr_schedule", LR_SCHEDULES), ("mixed_precision", PRECISIONS),
                   ("gan_features", GAN_FEATURES), ("student_kind", KINDS), ("fake_kind", KINDS))
        for name, allowed in choices:
            if options[name] not in allowed:
                raise ValueError(f"unknown --{flag(name)} '{options[name]}'; choose one of: {', '.join(allowed)}")
        if min(self.checkpoint_every, self.student_every, self.sample_every) < 0:
            raise ValueError("--checkpoint-every, --student-every and --sample-every must be 0 (off) or more")
        for name in ("lr_student", "lr_fake", "gan_head_lr"):
            if not 0 < options[name] <= 1:
                raise ValueError(f"--{flag(name)} must be more than 0 and at most 1 (typical: 1e-5 to 1e-2), not "
                                 f"{options[name]}")
        for role in (self.student, self.fake):
            if role.kind != "full" and role.rank < 1:
                raise ValueError(f"the adapter rank must be a positive integer, got {role.rank}")
        if not 0 <= self.lr_warmup < self.steps:
            raise ValueError(f"--lr-warmup-steps must be 0 or more and fewer than --steps ({self.steps}), "
                             f"got {self.lr_warmup}")
        regression, gan = self.extras.regression, self.extras.gan
        if regression.pairs < 0 or regression.weight < 0:
            raise ValueError("--regression-pairs and --regression-weight must be 0 or more")
        if min(gan.weight, gan.disc_weight) < 0:
            raise ValueError("--gan-weight and --gan-disc-weight must be 0 or more")
        if not 0 <= self.null_prompt_share <= 1:
            raise ValueError(f"the null-prompt share must be between 0 and 1, not {self.null_prompt_share}")
        if self.max_bad_steps < 1:
            raise ValueError(f"--max-bad-steps must be at least 1, got {self.max_bad_steps}")
        if not 0 <= t.t_min <= t.t_max:
            raise ValueError(f"--generator-t-min / --generator-t-max must satisfy 0 <= min <= max, got "
                             f"{t.t_min} and {t.t_max}")
        if not 0 <= t.late_fraction < 1:
            raise ValueError(f"--late-fraction must be 0 (off) or more and less than 1, got {t.late_fraction}")
        if t.late_fraction:
            if t.late_t_max is None:
                raise ValueError("--late-fraction needs --late-t-max T, the top timestep of the late phase")
            if not t.t_min <= t.late_t_max <= t.t_max:
                raise ValueError(f"--late-t-max must lie between --generator-t-min ({t.t_min}) and "
                                 f"--generator-t-max ({t.t_max}), got {t.late_t_max}")
        if self.guidance < 1 or (self.fake_guidance is not None and self.fake_guidance < 1):
            raise ValueError("--guidance and --fake-guidance must be 1 (no guidance) or more")
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema must be 0 (off) or a decay in (0, 1), got {self.ema}")


def default_model() -> Path:
    """The embedded shapes teacher, the model every command uses unless told otherwise."""
    from ..shapes.components import MODEL_DIR
    return MODEL_DIR


# flat option -> field path
OPTIONS: dict[str, str] = {
    "out": "out", "model": "model", "backbone": "backbone", "prompts": "prompts", "recipe": "recipe",
    "student_kind": "student.kind", "student_rank": "student.rank", "student_preset": "student.preset",
    "lr_student": "student.lr",
    "fake_kind": "fake.kind", "fake_rank": "fake.rank", "fake_preset": "fake.preset", "lr_fake": "fake.lr",
    "steps": "steps", "batch_size": "batch_size", "grad_accum": "grad_accum", "fake_updates": "fake_updates",
    "guidance": "guidance", "fake_guidance": "fake_guidance", "gradient_mode": "gradient_mode",
    "generator_t_min": "timesteps.t_min", "generator_t_max": "timesteps.t_max",
    "late_fraction": "timesteps.late_fraction", "late_t_max": "timesteps.late_t_max",
    "null_prompt_share": "null_prompt_share", "lr_schedule": "lr_schedule", "lr_warmup": "lr_warmup", "ema": "ema",
    "seed": "seed", "mixed_precision": "mixed_precision", "gradient_checkpointing": "gradient_checkpointing",
    "separate_copies": "separate_copies",
    "offload_optimizer": "offload_optimizer",
    "regression_pairs": "extras.regression.pairs", "regression_weight": "extras.regression.weight",
    "gan_weight": "extras.gan.weight", "gan_disc_weight": "extras.gan.disc_weight", "gan_images": "extras.gan.images",
    "gan_head_lr": "extras.gan.head_lr", "gan_features": "extras.gan.features",
    "checkpoint_every": "checkpoint_every", "student_every": "student_every", "sample_every": "sample_every",
    "sample_guidance": "sample_guidance",
    "max_bad_steps": "max_bad_steps", "export_merged": "export_merged", "overwrite": "overwrite",
    "resume": "resume", "report_to": "report_to",
}
# spellings of the options before the names were made one per concept (checkpoints and callers may hold them)
OLD_OPTIONS = {"teacher": "model", "student": "student_kind", "fake": "fake_kind"}


def flag(option: str) -> str:
    """The command-line flag of an option, without its dashes."""
    return {"lr_warmup": "lr-warmup-steps"}.get(option, option.replace("_", "-"))


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj, path: str, value):
    head, _, rest = path.partition(".")
    return replace(obj, **{head: _set(getattr(obj, head), rest, value) if rest else value})


def _default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _rule(cls, path: str) -> str:
    head, _, rest = path.partition(".")
    f = next(f for f in fields(cls) if f.name == head)
    if rest and f.metadata["resume"] == MATCH:  # a group that must match: its fields say for themselves
        return _rule(type(_default(f)), rest)
    return f.metadata["resume"]


def leaf_paths(cls=DistillConfig, prefix: str = "") -> list[str]:
    """Every leaf field of the config as a dotted path (a test keeps :data:`OPTIONS` covering them all)."""
    out = []
    for f in fields(cls):
        default = _default(f)
        if is_dataclass(default):
            out += leaf_paths(type(default), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out
