"""Locating a model call's step in a schedule."""
from __future__ import annotations

import torch

from lib_hires.sampling.steps import Step, locate_step, steps_for_fraction


def test_schedule_entries_map_to_their_step() -> None:
    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.3, 0.0])
    assert [locate_step(sigmas, float(s)) for s in sigmas[:-1]] == [0, 1, 2, 3, 4]


def test_intermediate_values_belong_to_the_step_they_follow() -> None:
    sigmas = torch.tensor([14.6, 7.0, 3.0, 0.0])
    assert locate_step(sigmas, 10.0) == 0  # e.g. a Heun/DPM2 midpoint
    assert locate_step(sigmas, 5.0) == 1
    assert locate_step(sigmas, 0.5) == 2
    assert locate_step(sigmas, 20.0) == 0  # above the schedule (churn): first step


def test_float_noise_at_an_entry() -> None:
    sigmas = torch.tensor([14.6, 7.0, 3.0, 0.0], dtype=torch.float64)
    assert locate_step(sigmas, 7.0 * (1 - 1e-7)) == 1
    assert locate_step(sigmas.float(), float(torch.tensor(3.0, dtype=torch.float32))) == 2


def test_fraction_and_rounding() -> None:
    assert Step(3, 12).fraction == 0.25
    assert steps_for_fraction(30 / 50, 50) == 30
    assert steps_for_fraction(30 / 50, 20) == 12
    assert steps_for_fraction(0.7, 5) == 4
