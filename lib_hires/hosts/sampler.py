"""Hooking one sampling pass of the WebUI's own sampler (shared by the A1111 and Forge adapters).

Both WebUIs create a new `p.sampler` for every pass and call `p.sampler.func(model_wrap_cfg, x, ...)`
(k-diffusion samplers with a `sigmas` keyword, timestep samplers with `timesteps`), choosing the
keyword arguments by inspecting the function's signature. `wrap_pass_sampler` replaces that instance
attribute with a function of the same signature which, for the duration of the sampler run only,
patches the UNet for the pass (restored in `finally`, also on errors and interrupts) and publishes a
`SamplingPass` for the adapter's model-call wrapper.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..job import JobPlan
from ..patching import PatchScope
from ..sampling.hooks import PassSlot, hooked_sampler

MARK = "_hires_methods_pass"  # set on our wrapper so a second call for the same sampler is a no-op


def wrap_pass_sampler(sampler: Any, plan: JobPlan, pass_name: str, unet: nn.Module, slot: PassSlot,
                      warn: Callable[[str], None],
                      model_calls: Callable[[PatchScope], Callable[[Any], Any]] = lambda scope: lambda model: model,
                      ) -> None:
    """Replace `sampler.func` for one pass (idempotent: Forge calls the pass hook twice).

    `model_calls` adds the adapter's own scoped patches (A1111: the model-call wrapper) and returns the
    wrapper of the CFG denoiser the sampler gets (A1111: to learn the batch layout).
    """
    original = sampler.func
    if getattr(original, MARK, False):
        return
    parameters = inspect.signature(original).parameters
    schedule_arg = "timesteps" if "timesteps" in parameters and "sigmas" not in parameters else "sigmas"

    @functools.wraps(original)  # keeps the signature the WebUI inspects
    def run(model: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with PatchScope() as scope:
            hooks = plan.install(pass_name, unet, scope, warn)
            wrap_model = model_calls(scope)
            return hooked_sampler(original, hooks, slot, schedule_arg)(wrap_model(model), x, *args, **kwargs)

    setattr(run, MARK, True)
    sampler.func = run
