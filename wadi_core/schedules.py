"""Learning-rate schedules as pure functions of the step, so that a resumed run needs no scheduler state
and continues on exactly the same rates."""
import math

LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The multiplier of the base learning rate at ``step`` (0-based) of ``total``: a linear warmup over
    ``warmup`` steps, then constant, a cosine to 0 or a straight line to 0 at ``total``."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule '{schedule}'; choose one of: {', '.join(LR_SCHEDULES)}")
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Warmup then a cosine to 0 (the teacher's training schedule)."""
    return lr_factor("cosine", step, total, warmup)
