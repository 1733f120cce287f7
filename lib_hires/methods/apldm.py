"""AP-LDM (Cao et al., 2024): attentive guidance in a base pass at the training pixel count, then
pixel-space progressive refinement up to the target (methods/ap-ldm.md; docs/ap_ldm.md).

* Stage 1 (§2): the base size keeps the model's native pixel count at the target's aspect, rounded to
  the UNet's multiple (64 px SD1.x/SD2.x, 32 px SDXL; a necessary deviation: the official code floors
  to 8 px, which the LDM UNet cannot run). After every guided step the latent moves toward its
  parameter-free self-attention (`ops.attentive_guidance`).
* Stage 2 (§3): one sub-stage per strength eta2: areas linear from the base area to the target's, sides
  floored to the UNet's multiple, the last exactly the target; each decodes, resizes bicubically in
  pixel space, clamps, encodes (posterior mean), re-noises to index `int(N (1 - eta2))` of a fresh
  N-step schedule and samples the rest with the unmodified UNet.
* SDXL's size conditioning is the current stage's size everywhere (original = target = stage size).

Two entries: *direct* (hires fix off, the target typed as the size): the first pass becomes the whole
cascade, N = the pass's steps. *Hires fix*: the first pass is stage 1 (guided), the hires pass becomes
stage 2 from the first pass's result, N = the hires steps; the WebUI's denoising strength and hires
upscaler are not used (the strengths and the bicubic pixel-space resize take their place).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..ops.attentive_guidance import guidance_scales, guide, guided_steps
from ..ops.conditioning import with_sizes
from ..params import APLDMParams, AttentiveGuidanceParams, fields, parse_strengths
from ..patching import PatchScope
from ..sampling.driver import Stage
from ..sampling.hooks import CallHook, CallNext, ModelCall, PassHooks, Warn
from ..sampling.steps import Step
from ..unet import ModelFamily
from .base import CascadePlan, JobContext, MethodPlan, PassSize

MAX_ASPECT = 4.0  # longer side / shorter side of the target
MAX_SCALE = 8.0  # target side / base side (per axis, by area)


@dataclass(frozen=True)
class Guidance:
    """Attentive guidance: scale gamma, the guided share of the steps [delay, end), cosine decay beta."""

    gamma: float
    delay: float
    end: float
    decay: float

    def describe(self, steps: int) -> str:
        guided = guided_steps(steps, self.delay, self.end)
        if self.gamma == 0 or not guided:
            return "no attentive guidance"
        decay = f", cosine decay {self.decay:g}" if self.decay else ""
        return f"attentive guidance {self.gamma:g} after steps {guided.start + 1}-{guided.stop} of {steps}{decay}"


PRESETS = {
    "paper": Guidance(0.004, 0.06, 1.0, 3.0),  # the paper (methods/README.md §2 row 16)
    "code": Guidance(0.005, 0.06, 0.38, 0.0),  # the official notebook: guided steps 3-18 of 50, no decay
}
GUIDANCE_FIELDS = ("gamma", "delay", "end", "decay")


def resolve(params: AttentiveGuidanceParams, given: frozenset[str]) -> Guidance:
    """The preset's guidance, with every explicitly given field taken from `params` (AP-LDM's group or the
    Attentive base combination's, each with its own keys)."""
    own = Guidance(params.gamma, params.delay, params.end, params.decay)
    preset = PRESETS.get(params.preset)
    if preset is None:
        return own
    keys = {f.name: f.api_key for f in fields(type(params))}
    return Guidance(*(getattr(own if keys[name] in given else preset, name) for name in GUIDANCE_FIELDS))


def unet_multiple(family: ModelFamily) -> int:
    """Pixel multiple an LDM UNet runs at: 8 px per latent pixel, halved per downsampler (3 or 2)."""
    return 32 if family is ModelFamily.SDXL else 64


def base_size(width: int, height: int, native: int, multiple: int) -> tuple[int, int]:
    """Stage 1's (width, height): the native pixel count at the target's aspect (§2.1), each side rounded
    to `multiple` (at least one multiple)."""
    ratio = height / width
    return (max(multiple, round(native / math.sqrt(ratio) / multiple) * multiple),
            max(multiple, round(native * math.sqrt(ratio) / multiple) * multiple))


def stage_sizes(base: tuple[int, int], target: tuple[int, int], count: int, multiple: int) -> list[tuple[int, int]]:
    """The (width, height) of `count` refinement stages (§3): areas in equal steps from the base's to the
    target's, sides at the target's aspect floored to `multiple`, the last exactly the target."""
    width, height = target
    ratio = height / width
    start, stop = base[0] * base[1], width * height
    sizes = []
    for k in range(1, count):
        area = start + (stop - start) * k / count
        sizes.append((max(multiple, int(math.sqrt(area / ratio) / multiple) * multiple),
                      max(multiple, int(math.sqrt(area * ratio) / multiple) * multiple)))
    return [*sizes, (width, height)]


def auto_strengths(scale: float) -> tuple[float, ...]:
    """eta2 per refinement stage for a target `scale` times the base side: the paper's [0.2] up to 2x
    (SDXL 2048²), the official notebook's [0.2, 0.2] up to 3x (3072²), the paper's [0.1, 0.2] above
    (4096²)."""
    if scale <= 2 + 1e-9:
        return (0.2,)
    if scale <= 3 + 1e-9:
        return (0.2, 0.2)
    return (0.1, 0.2)


def start_index(steps: int, strength: float) -> int:
    """Where a sub-stage enters an N-step schedule: `int(N * init_rate)`, init_rate = 1 - eta2 (§3),
    at most N - 1 so that every stage runs at least one step."""
    return min(int(steps * (1 - strength) + 1e-9), steps - 1)


@dataclass(frozen=True)
class StagePlan:
    """What one AP-LDM stage hooks: attentive guidance after its guided steps (stage 1 only) and, on
    SDXL, its own size as the size conditioning."""

    guidance: Guidance | None
    sdxl_size: tuple[int, int] | None  # (height, width) in pixels

    def install(self, unet: nn.Module, scope: PatchScope, warn: Warn) -> PassHooks:
        steps = (self._guide,) if self.guidance is not None and self.guidance.gamma > 0 else ()
        calls = (size_hook(self.sdxl_size),) if self.sdxl_size is not None else ()
        return PassHooks(step_hooks=steps, call_hooks=calls)

    def _guide(self, x: torch.Tensor, step: Step) -> None:
        """At the start of step k, guide the result of step k - 1 (the official code guides right after
        the scheduler step; `Step(count, count)` is the final result)."""
        assert self.guidance is not None
        done = step.index - 1
        guided = guided_steps(step.count, self.guidance.delay, self.guidance.end)
        if done in guided:
            gamma = guidance_scales(self.guidance.gamma, len(guided), self.guidance.decay)[done - guided.start]
            x.copy_(guide(x, gamma))



def size_hook(size: tuple[int, int]) -> CallHook:
    """SDXL: every model call conditioned on `size` (height, width) as original and target size (AP-LDM's
    stages, FreeScale's)."""
    def sized(call: ModelCall, call_next: CallNext) -> torch.Tensor:
        return call_next(dataclasses.replace(call, cond=with_sizes(call.cond, *size)))

    return sized


def _latent(size: tuple[int, int]) -> tuple[int, int]:
    return size[1] // 8, size[0] // 8


class APLDM:
    """The AP-LDM method (`methods.base.Method`)."""

    params = APLDMParams
    tabs = ("txt2img",)

    def presets(self, family: object) -> tuple[str, ...]:
        return ("paper", "code", "custom")

    def plan(self, params: APLDMParams, given: frozenset[str], job: JobContext) -> MethodPlan:
        guidance = resolve(params, given)
        resolved = dataclasses.replace(params, **{name: getattr(guidance, name) for name in GUIDANCE_FIELDS})
        multiple = unet_multiple(job.family)
        sdxl = job.family is ModelFamily.SDXL
        if job.hires is None:
            target = job.first
            base = base_size(target.width, target.height, job.native, multiple)
            problem = self._size_problem(target, base, job.native, "Width and Height",
                                         f"the model's native {job.native}x{job.native}")
        else:
            target = job.hires
            base = (job.first.width, job.first.height)
            problem = self._size_problem(target, base, job.native, "Hires upscale / Resize width and height",
                                         f"the first pass's {base[0]}x{base[1]}")
        if problem:
            return MethodPlan({}, resolved, warnings=(f"AP-LDM not applied: {problem}",))
        scale = math.sqrt(target.width * target.height / (base[0] * base[1]))
        strengths = parse_strengths(params.refine) or auto_strengths(scale)
        steps = target.steps
        first = StagePlan(guidance, (base[1], base[0]) if sdxl else None)
        refine = [Stage(_latent(size), steps, start_index(steps, eta),
                        StagePlan(None, (size[1], size[0]) if sdxl else None), upscale="rgb", encode=params.encode)
                  for size, eta in zip(stage_sizes(base, (target.width, target.height), len(strengths), multiple),
                                       strengths)]
        refined = ", ".join(f"{stage.size[1] * 8}x{stage.size[0] * 8} from step {stage.start + 1} of {steps}"
                            for stage in refine)
        strengths_text = " ".join(f"{eta:g}" for eta in strengths)
        if job.hires is None:
            passes: dict[str, Any] = {"first": CascadePlan((Stage(_latent(base), steps, 0, first), *refine), True)}
            line = (f"first pass {target.width}x{target.height}: base {base[0]}x{base[1]} with "
                    f"{guidance.describe(steps)}, then {refined} (strengths {strengths_text})")
            lines: tuple[str, ...] = (line,)
        else:
            passes = {"first": first, "hires": CascadePlan(tuple(refine), False)}
            lines = (f"first pass {base[0]}x{base[1]}: {guidance.describe(job.first.steps)}",
                     (f"hires pass {target.width}x{target.height}: {refined} (strengths {strengths_text}); "
                      "hires upscaler and denoising strength not used"))
        warnings: tuple[str, ...] = ()
        if guidance.gamma > 0 and not guided_steps(max(job.first.steps, 1), guidance.delay, guidance.end):
            warnings = ((f"AP-LDM: no step is guided (Guidance delay {guidance.delay:g} is not below Guidance "
                         f"end {guidance.end:g})"),)
        resolved = dataclasses.replace(resolved, refine=strengths_text)
        return MethodPlan(passes, resolved, lines=lines, warnings=warnings)

    @staticmethod
    def _size_problem(target: PassSize, base: tuple[int, int], native: int, field: str, reference: str) -> str:
        """Why AP-LDM cannot serve `target` from `base`, naming the field to change ('' if it can)."""
        width, height = target.width, target.height
        if width * height <= base[0] * base[1]:
            return (f"{field} {width}x{height} must have more pixels than {reference} "
                    f"({base[0] * base[1]} px); AP-LDM refines a smaller base image up to the target")
        aspect = max(width, height) / min(width, height)
        if aspect > MAX_ASPECT:
            return f"{field} {width}x{height} has an aspect of {aspect:.2f}:1; allowed: up to {MAX_ASPECT:g}:1"
        scale = math.sqrt(width * height / (base[0] * base[1]))
        if scale > MAX_SCALE:
            return (f"{field} {width}x{height} is {scale:.1f}x the base side ({base[0]}x{base[1]}); allowed: up "
                    f"to {MAX_SCALE:g}x (at {native} px native, about {int(native * MAX_SCALE)}x{int(native * MAX_SCALE)})")
        return ""
