"""Learning-rate schedules: pure functions of the step."""

import math

import pytest

from wadi_core.schedules import cosine_lr, lr_factor


def test_warmup_ramps_linearly_then_each_schedule_takes_over():
    assert [lr_factor("constant", s, 10, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor("constant", 9, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 9, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert [lr_factor("linear", s, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert lr_factor("linear", 7, 4) == 0.0  # past the end (a resumed run asked for fewer steps): never negative


def test_the_teachers_cosine_is_the_cosine_schedule():
    assert cosine_lr(3, 100, 10) == lr_factor("cosine", 3, 100, 10) == 0.4
    assert cosine_lr(55, 100, 10) == pytest.approx(0.5)


def test_an_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="'warm'.*constant, cosine, linear"):
        lr_factor("warm", 0, 10)
