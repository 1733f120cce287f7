"""Combinations: a part of one method run inside another method's plan (methods/README.md §4; docs/choosing.md).

Each combination is a switch (`params.Combination`) that takes the chosen method's passes, as its
`MethodPlan` made them, and returns them with its part added, so that the methods themselves know
nothing of it:

* **Attentive base** (`attentive_base`): AP-LDM's attentive guidance (§2, `ops.attentive_guidance`) in
  the base pass. In a cascade from noise (DemoFusion/AccDiffusion's first phase, FreeScale's base
  image) its first stage; with hires fix the first pass, before the method's hires pass or cascade;
  FSTD/MultiDiffusion without hires fix sample the target in one pass, so that pass becomes a cascade:
  a guided base image at the model's native pixel count (AP-LDM's base size), upscaled in pixel space
  (AP-LDM's operator: bicubic, clamp, posterior mean) and re-noised to `int(N (1 - strength))`, then
  the rest of the schedule tiled by the method.
* **ScaleCrafter in stages** (`stage_dilation`): every stage of a cascade that is larger than the
  model's native size is re-dilated by the ScaleCrafter setting resolved for the stage's size
  (`methods.scalecrafter.resolve`, Auto), over the stage's own steps, as ScaleCrafter treats a hires
  pass (its tau is a share of the pass's steps).

Parts run after the method's own: patches installed after its patches, step and call hooks after its
hooks (a size-conditioning hook of the method wraps ScaleCrafter's noise-damped call too).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from ..ops.attentive_guidance import guided_steps
from ..params import AttentiveBaseParams, ParamGroup, ScaleCrafterParams, StageDilationParams, fields
from ..patching import PatchScope
from ..sampling.driver import Stage, StageAware, StageInput
from ..sampling.hooks import PassHooks, PassPlan, Warn
from ..unet import ModelFamily
from .apldm import GUIDANCE_FIELDS, StagePlan, base_size, resolve, start_index, unet_multiple
from .base import CascadePlan, JobContext
from .scalecrafter import SettingError, bind, describe
from .scalecrafter import resolve as resolve_scalecrafter

Part = PassPlan | StageAware | None
Passes = Mapping[str, PassPlan | CascadePlan]


@dataclass(frozen=True)
class Joined:
    """Pass plans run together: each installs in order; their step hooks, then call hooks, concatenated."""

    parts: tuple[PassPlan, ...]

    def install(self, unet: nn.Module, scope: PatchScope, warn: Warn) -> PassHooks:
        hooks = [part.install(unet, scope, warn) for part in self.parts]
        return PassHooks(tuple(h for each in hooks for h in each.step_hooks),
                         tuple(h for each in hooks for h in each.call_hooks))


@dataclass(frozen=True)
class JoinedStage:
    """Stage plans run together where one of them needs the stage's input (`StageAware`)."""

    parts: tuple[PassPlan | StageAware, ...]

    def for_stage(self, stage: StageInput) -> PassPlan:
        return Joined(tuple(part.for_stage(stage) if isinstance(part, StageAware) else part for part in self.parts))


def joined(*parts: Part) -> Part:
    """One plan running every given part (None: nothing to run), in order."""
    present = tuple(part for part in parts if part is not None)
    if len(present) <= 1:
        return present[0] if present else None
    if any(isinstance(part, StageAware) for part in present):
        return JoinedStage(present)
    return Joined(present)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Added:
    """A combination's result: the passes with its part added, its values as used (for the infotext), one
    line per place it acts, warnings, and the given keys it had no use for."""

    passes: Passes
    resolved: ParamGroup
    lines: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    unused: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _px(stage: Stage) -> str:
    return f"{stage.size[1] * 8}x{stage.size[0] * 8}"


def attentive_base(params: AttentiveBaseParams, given: frozenset[str], job: JobContext, passes: Passes) -> Added:
    """AP-LDM's attentive guidance in the base pass of `passes` (see the module docstring)."""
    guidance = resolve(params, given)
    resolved = dataclasses.replace(params, **{name: getattr(guidance, name) for name in GUIDANCE_FIELDS})
    strength_key = next(f.api_key for f in fields(AttentiveBaseParams) if f.name == "strength")
    unused = {strength_key: "only FSTD and MultiDiffusion without hires fix refine a base image by strength"}
    guided = StagePlan(guidance, None)
    first = passes.get("first")
    lines: list[str] = []
    warnings: list[str] = []
    out = dict(passes)
    if isinstance(first, CascadePlan):
        base = first.stages[0]
        out["first"] = dataclasses.replace(first, stages=(dataclasses.replace(base, plan=joined(guided, base.plan)),
                                                          *first.stages[1:]))
        lines.append(f"base {_px(base)} of the first pass: {guidance.describe(base.steps)}")
        steps = base.steps
    elif job.hires is not None and "hires" in passes:
        out["first"] = joined(guided, first)  # type: ignore[assignment]
        lines.append(f"first pass {job.first.width}x{job.first.height}: {guidance.describe(job.first.steps)}")
        steps = job.first.steps
    elif first is not None:
        target, steps = job.first, job.first.steps
        multiple = unet_multiple(job.family)
        size = base_size(target.width, target.height, job.native, multiple)
        if target.width * target.height <= size[0] * size[1]:
            return Added(passes, resolved, warnings=(
                f"Attentive base not applied: Width and Height {target.width}x{target.height} must have more pixels "
                f"than the model's native {job.native}x{job.native}; the tiled pass runs alone",), unused=unused)
        sdxl = (size[1], size[0]) if job.family is ModelFamily.SDXL else None
        start = start_index(steps, params.strength)
        out["first"] = CascadePlan((Stage((size[1] // 8, size[0] // 8), steps, 0, StagePlan(guidance, sdxl)),
                                    Stage(target.latent, steps, start, first, upscale="rgb")), True)
        lines.append(f"first pass {target.width}x{target.height}: base {size[0]}x{size[1]} with "
                     f"{guidance.describe(steps)}, upscaled in pixel space, then the tiled pass from step {start + 1} "
                     f"of {steps} (strength {params.strength:g})")
        unused = {}
    else:
        return Added(passes, resolved, unused=unused)
    if guidance.gamma > 0 and not guided_steps(max(steps, 1), guidance.delay, guidance.end):
        warnings.append(f"Attentive base: no step is guided (Guidance delay {guidance.delay:g} is not below Guidance "
                        f"end {guidance.end:g})")
    return Added(out, resolved, tuple(lines), tuple(warnings), unused)


def stage_dilation(params: StageDilationParams, given: frozenset[str], job: JobContext, passes: Passes,
                   setting: ScaleCrafterParams = ScaleCrafterParams()) -> Added:
    """ScaleCrafter's re-dilation (`setting`: Auto) in every cascade stage of `passes` (module docstring)."""
    out = dict(passes)
    lines: list[str] = []
    warnings: list[str] = []
    cascades = {name: plan for name, plan in passes.items() if isinstance(plan, CascadePlan)}
    left: list[str] = []  # why the setting leaves a stage alone
    for name, plan in cascades.items():
        stages = []
        for stage in plan.stages:
            height, width = stage.size[0] * 8, stage.size[1] * 8
            try:
                resolution = resolve_scalecrafter(setting, frozenset(), job.family, job.native, width, height)
                bound = None if job.unet_map is None or resolution.empty else bind(resolution, job.unet_map, stage.size)
            except SettingError as exc:
                warnings.append(f"ScaleCrafter in stages: {width}x{height} left as it is: {exc}")
                stages.append(stage)
                continue
            if resolution.empty:
                left.append(f"{width}x{height}: {resolution.source}")
            else:
                lines.append(f"{name} pass stage {width}x{height}: {describe(resolution, stage.runs)}")
            stages.append(dataclasses.replace(stage, plan=joined(stage.plan, bound)))
        out[name] = dataclasses.replace(plan, stages=tuple(stages))
    if cascades and not lines and not warnings:
        warnings.append(f"ScaleCrafter in stages: no stage is re-dilated ({'; '.join(left)})")
    return Added(out, params, tuple(lines), tuple(warnings))


COMBINATIONS: Mapping[type[ParamGroup], Callable[[Any, frozenset[str], JobContext, Passes], Added]] = MappingProxyType(
    {AttentiveBaseParams: attentive_base, StageDilationParams: stage_dilation})
"""The combination of each `params.COMBINATION_GROUPS` group (a test keeps the two in step)."""
