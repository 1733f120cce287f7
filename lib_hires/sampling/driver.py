"""The stage driver: runs a cascade of sampling stages on a host, inside one WebUI pass.

A cascade replaces one WebUI pass (DESIGN.md, "Sampling"). Its first stage either samples from noise
over a whole schedule (the *direct* entry: the user typed the target size) or continues from a latent
the host already has (the *hires-fix* entry: the first pass's result). Every stage after that upscales
the previous result, re-noises it to `sigmas[start]` of its own `steps`-step schedule with fresh
seeded noise (`x0 + sigma eps`, the k-diffusion form of the official pipelines' `add_noise`;
methods/README.md §5) and samples the rest of that schedule with its plan's hooks.

Upscaling between stages (`Stage.upscale`):
* `latent`: bicubic in latent space (align_corners=False, as DemoFusion);
* `rgb`: decode, bicubic in pixel space, clamp to [-1, 1] (AP-LDM; FreeScale does not: `Stage.clamp`),
  encode with the posterior mean (AP-LDM) or a sample seeded from the image seed (`Stage.encode`,
  FreeScale).

A stage's plan may act on where the stage starts (DemoFusion's skip residual pulls every step toward
the upscaled previous result, noised with the stage's noise): such a plan is `StageAware` and gets a
`StageInput` before it is installed.

The host's progress bar covers all stages: the driver announces every stage's step count first.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ..host import Host
from ..patching import PatchScope
from .hooks import PassHooks, PassPlan, Warn

ENCODE_NOISE = 1000  # noise stream of stage k's encoder sample: ENCODE_NOISE + k (re-noise: stream k)


@dataclass(frozen=True)
class StageInput:
    """Where a stage starts: its index, the clean latent it re-noised (the previous result at this size;
    None from noise), the unit noise it used, the schedule it samples (`sigmas[start:]`), the previous
    stage's result (None from noise) and the host."""

    index: int
    clean: torch.Tensor | None
    noise: torch.Tensor
    sigmas: torch.Tensor
    previous: torch.Tensor | None
    host: Host


@runtime_checkable
class StageAware(Protocol):
    """A stage plan that needs its `StageInput` to make the pass plan it installs."""

    def for_stage(self, stage: StageInput) -> PassPlan: ...


@dataclass(frozen=True)
class Stage:
    """One stage: its latent size (height, width), the length of its schedule and the index it starts
    at, how it gets there from the previous stage, and what it patches and hooks (None: the unmodified
    model)."""

    size: tuple[int, int]
    steps: int
    start: int = 0
    plan: PassPlan | StageAware | None = None
    upscale: str = "latent"  # "latent" or "rgb"
    encode: str = "mean"  # rgb only: "mean" or "sample"
    clamp: bool = True  # rgb only: clamp the resized image to [-1, 1] before encoding

    @property
    def runs(self) -> int:
        """Sampler steps this stage runs."""
        return self.steps - self.start


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize to `size` (align_corners=False), computed in float32; identity at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False).to(x.dtype)


def upscale(host: Host, latent: torch.Tensor, stage: Stage, index: int) -> torch.Tensor:
    """The previous stage's latent at this stage's size (the clean x0 the stage re-noises)."""
    if stage.upscale == "latent":
        return resize(latent, stage.size)
    image = host.decode(latent)
    image = resize(image, (stage.size[0] * 8, stage.size[1] * 8))
    if stage.clamp:
        image = image.clamp(-1, 1)
    noise = host.noise((image.shape[0], latent.shape[1], *stage.size), ENCODE_NOISE + index) \
        if stage.encode == "sample" else None
    return host.encode(image, noise)


def run_stages(host: Host, stages: Sequence[Stage], latent: torch.Tensor | None = None,
               warn: Warn = lambda text: None, channels: int = 4) -> torch.Tensor:
    """Run `stages` in order and return the last stage's latent. Without `latent` the first stage
    samples from noise (it must start at index 0); with it, every stage starts from the previous latent.

    After a stage that the user interrupted (or skipped) the driver stops and returns that stage's
    latent; an interrupt that comes while a stage upscales returns the previous stage's. Every stage's
    patches are undone when it ends, also on errors.
    """
    if not stages:
        raise ValueError("run_stages needs at least one stage")
    for index, stage in enumerate(stages):
        if not 0 <= stage.start < stage.steps:
            raise ValueError(f"stage {index} starts at schedule index {stage.start}; allowed: 0 to {stage.steps - 1}")
    if latent is None and stages[0].start != 0:
        raise ValueError("a cascade from noise starts at schedule index 0")
    if latent is None and stages[0].upscale != "latent":
        raise ValueError("a cascade from noise has nothing to upscale in its first stage")
    host.begin_stages([stage.runs for stage in stages])
    x = latent
    for index, stage in enumerate(stages):
        sigmas = host.sigmas(stage.steps)
        shape = (host.batch_size, channels, *stage.size)
        noise = host.noise(shape, index)
        clean = None if x is None else upscale(host, x, stage, index)
        start = noise * sigmas[0] if clean is None else clean + noise.to(clean) * sigmas[stage.start]
        if x is not None and host.interrupted():  # during the upscale: the last stage's result stands
            break
        plan = stage.plan
        if isinstance(plan, StageAware):
            plan = plan.for_stage(StageInput(index, clean, noise.to(start), sigmas[stage.start:], x, host))
        with PatchScope() as scope:
            hooks = plan.install(host.unet, scope, warn) if plan is not None else PassHooks()
            x = host.sample(start, sigmas[stage.start:], hooks, index)
        if host.interrupted():
            break
    assert x is not None
    return x
