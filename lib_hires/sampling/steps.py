"""Which step of the schedule a model call belongs to.

Samplers pass the model the noise level of the point they evaluate: a k-diffusion sigma, or a
timestep for the WebUI's timestep samplers. Second-order samplers also evaluate points between two
schedule entries. A call belongs to step `i` when its value lies in `(schedule[i+1], schedule[i]]`:
step 0 is the noisiest. Methods express their gates as a fraction of the pass's steps (the papers'
indices are for 50 steps; DESIGN.md rule 7).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Step:
    """A step of one sampling pass: `index` 0 is the noisiest of `count` steps."""

    index: int
    count: int

    @property
    def fraction(self) -> float:
        """Position in the pass, 0 at the first step (index / count)."""
        return self.index / self.count


def steps_for_fraction(fraction: float, count: int) -> int:
    """How many initial steps of a `count`-step pass a schedule fraction covers (rounded)."""
    return int(round(fraction * count))


def locate_step(schedule: torch.Tensor, value: float) -> int:
    """Index of the step whose interval `(schedule[i+1], schedule[i]]` holds `value`.

    `schedule` is decreasing (the values the sampler steps through, usually ending in 0). Values above
    the first entry belong to step 0; values at or below the last non-final entry to the last step.
    A relative tolerance of 1e-5 absorbs float differences between the schedule and the model input.
    """
    count = schedule.numel() - 1
    if count < 1:
        raise ValueError("a schedule needs at least two entries")
    # the interval index is the number of inner entries schedule[1:count] at or above the value
    return int((schedule[1:count].double() >= value * (1 - 1e-5)).sum().item())


def sigma_to_timestep(sigma: torch.Tensor, train_sigmas: torch.Tensor) -> torch.Tensor:
    """The model's continuous training timestep of each sigma: log-sigma interpolation over its training
    sigmas (increasing, one per timestep; k-diffusion's `sigma_to_t`), clamped to [0, T - 1]."""
    log_sigmas = train_sigmas.detach().double().log().to("cpu")
    log_sigma = sigma.detach().double().to("cpu").clamp_min(float(train_sigmas.min())).log()
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, log_sigmas.numel() - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    return (low + ((log_sigma - lo) / (hi - lo)).clamp(0, 1)).float()
