"""FreeScale (Qiu et al., 2024): a self-cascade in RGB space with detail control, restrained dilation and
scale-fusion self-attention (methods/freescale.md; docs/freescale.md).

* Stages (§2): a base image at the model's native pixel count (the target's aspect, sides rounded to the
  UNet's multiple; the hires entry: the first pass), then one upscaling stage per doubling of the side
  (or as many as asked), sides growing geometrically to exactly the target. Each upscaling stage
  decodes the previous latent, resizes it bicubically in pixel space (no clamp, as the official code),
  encodes it with a posterior *sample*, re-noises it with one noise draw to index `int(restart N)` of a
  fresh N-step schedule and samples the rest.
* Detail control (§2): before every step, `z <- (1 - c) z + c (z0 + sigma eps)` with `c = cf(t)^alpha`
  (`ops.skip_residual`); with a region mask alpha is the foreground value on the mask's non-black
  pixels and the background value elsewhere (the official image-generation pipeline).
* Restrained dilation (§3): the 3x3 convs of the downsampler feeding the deepest level, the deepest down
  block and the middle block run with dilation `d = stage width // native width` on the steps before
  `int(dilation_end N)`, through ScaleCrafter's re-dilation (`methods.scalecrafter.ScaleCrafterPass`).
  SDXL: `input_blocks.6.0.op`, 7-8 and the middle block (the official layers); SD1.x/SD2.x: the same
  rule one level deeper, `input_blocks.9.0.op`, 10-11 and the middle block (spec §7, ours).
* Scale fusion (§4): every self-attention (`attn1`) of the UNet in an upscaling stage is replaced by
  `ops.scale_fusion.ScaleFusion`, its windows re-drawn at every call from a generator seeded per step.
* SDXL's size conditioning is the base stage's size in every stage (the official time ids).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import math
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.scale_fusion import ScaleFusion, scale_numbers, token_windows
from ..ops.windows import overlap_grid
from ..ops.skip_residual import cosine_factor, skip_residual
from ..params import FreeScaleParams, fields
from ..patching import PatchScope
from ..sampling.driver import Stage, StageInput
from ..sampling.hooks import CallNext, FixedHooks, ModelCall, PassHooks, PassPlan, Warn
from ..sampling.local_global import step_seed
from ..sampling.steps import Step
from ..unet import ModelFamily, UNetMap
from .apldm import base_size, size_hook, unet_multiple
from .base import CascadePlan, JobContext, MethodPlan
from .scalecrafter import Plan, Resolution, ScaleCrafterPass, SettingError, bind

OFFICIAL = {"detail": 2.0, "restart": 0.3, "dilation_end": 0.7}
"""The official run script (methods/freescale.md §1): cosine_scale 2, restart int(0.3 N), dilate_tau 35 of 50."""
PRESETS = {"official": OFFICIAL, "8k": {**OFFICIAL, "detail": 1.0}}


def resolve(params: FreeScaleParams, given: frozenset[str]) -> FreeScaleParams:
    """The preset's values, with every explicitly given field kept (preset Custom: all of them)."""
    preset = PRESETS.get(params.preset)
    if preset is None:
        return params
    keys = {f.name: f.api_key for f in fields(FreeScaleParams)}
    return dataclasses.replace(params, **{name: value for name, value in preset.items() if keys[name] not in given})


def round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def stage_sizes(target: tuple[int, int], base: tuple[int, int], multiple: int, count: int = 0) -> list[tuple[int, int]]:
    """(width, height) of the base and every upscaling stage: `count` upscaling stages (0: one per doubling
    of the side, at least one), sides growing by the same factor per stage, rounded to `multiple`, the
    last exactly the target. [] when the target has no more pixels than the base."""
    if target[0] * target[1] <= base[0] * base[1]:
        return []
    scale = math.sqrt(target[0] * target[1] / (base[0] * base[1]))
    count = count or max(1, round(math.log2(scale)))
    middle = [tuple(round_to(b * (t / b) ** (k / count), multiple) for b, t in zip(base, target))
              for k in range(1, count)]
    return [base, *[(w, h) for w, h in middle], target]


def schedule_index(fraction: float, steps: int) -> int:
    """`int(fraction N)`, the official restart and dilation indices (0.3 of 50 -> 15)."""
    return int(fraction * steps + 1e-9)


def decode_mask(text: str) -> torch.Tensor:
    """A region mask (base64 image, `params.parse_mask`) as a (1, 1, H, W) float tensor: 1 where the
    grey value is not 0 (the official `process_image_to_bitensor`)."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        grey = torch.frombuffer(bytearray(image.convert("L").tobytes()), dtype=torch.uint8)
        size = image.size
    return (grey.reshape(1, 1, size[1], size[0]) != 0).float()


def dilated_blocks(unet_map: UNetMap, factor: int) -> dict[str, float]:
    """The restrained-dilation blocks (§3): the downsampler into the deepest level, the deepest down block
    and the middle block."""
    deepest = unet_map.levels - 1
    return {f"DB{deepest - 1}.sampler": factor, f"DB{deepest}": factor, "MB": factor}


@dataclass(frozen=True, eq=False)
class Detail:
    """Detail control: the exponent alpha, or per pixel from a mask (foreground `alpha`, background `background`)."""

    alpha: float
    background: float
    mask: torch.Tensor | None = None  # (1, 1, H, W), 1 = foreground

    def exponent(self, latent: tuple[int, int]) -> float | torch.Tensor:
        if self.mask is None:
            return self.alpha
        mask = F.interpolate(self.mask, size=latent, mode="nearest")
        return mask * self.alpha + (1 - mask) * self.background


@dataclass(frozen=True, eq=False)
class Upscaling:
    """One upscaling stage (a `StageAware` plan): detail control, restrained dilation (a ScaleCrafter plan
    bound to this stage, or None), scale fusion (None: off) on the self-attention modules `attention`, SDXL
    size conditioning (None: not SDXL)."""

    detail: Detail
    dilation: Plan | None
    fusion: ScaleFusion | None
    attention: tuple[str, ...]
    sdxl_size: tuple[int, int] | None
    seed: int

    def for_stage(self, stage: StageInput) -> PassPlan:
        return UpscalingHooks(self, stage)


class UpscalingHooks:
    """The hooks of one upscaling stage."""

    def __init__(self, plan: Upscaling, stage: StageInput) -> None:
        if stage.clean is None:
            raise ValueError("a FreeScale upscaling stage starts from the previous stage's image")
        self.plan, self.stage, self.clean = plan, stage, stage.clean
        self.timesteps = [float(t) for t in stage.host.timestep(stage.sigmas.float())]
        self.exponent = plan.detail.exponent(tuple(stage.clean.shape[-2:]))
        self.rng: random.Random | None = None  # set while a model call runs

    def install(self, unet: nn.Module, scope: PatchScope, warn: Warn) -> PassHooks:
        plan = self.plan
        calls = []
        if plan.fusion is not None:
            for path in plan.attention:
                module = unet.get_submodule(path)
                scope.wrap_forward(module, self._fused(plan.fusion, getattr(module, "heads", 1)))
            calls.append(self._windows)
        if plan.sdxl_size is not None:
            calls.append(size_hook(plan.sdxl_size))
        if plan.dilation is not None:
            calls.extend(ScaleCrafterPass(plan.dilation, unet, scope, warn).hooks.call_hooks)
        return PassHooks(step_hooks=(self.detail,), call_hooks=tuple(calls))

    def detail(self, x: torch.Tensor, step: Step) -> None:
        """Before step j > 0 (at j = 0 the latent is the noised upscaled image itself)."""
        if 0 < step.index < step.count:
            exponent = self.exponent.to(x) if isinstance(self.exponent, torch.Tensor) else self.exponent
            c = cosine_factor(self.timesteps[step.index]) ** exponent
            x.copy_(skip_residual(x, self.clean.to(x), self.stage.noise.to(x), float(self.stage.sigmas[step.index]), c))

    def _windows(self, call: ModelCall, call_next: CallNext) -> torch.Tensor:
        """Seed the window draws of this model call from the step."""
        self.rng = random.Random(step_seed(self.plan.seed, self.stage.index, call.step.index))
        try:
            return call_next(call)
        finally:
            self.rng = None

    def _fused(self, fusion: ScaleFusion, heads: int):  # type: ignore[no-untyped-def]
        def forward(original, x: torch.Tensor, *args: Any, context: Any = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[no-untyped-def]
            rng = self.rng
            if rng is None or args or context is not None:  # outside our model calls, or not self-attention
                return original(x, *args, context=context, **kwargs)
            out = fusion(lambda q, ctx: original(q, context=ctx, **kwargs), x, heads, rng)
            return original(x, context=context, **kwargs) if out is None else out

        return forward


def _latent(size: tuple[int, int]) -> tuple[int, int]:
    return size[1] // 8, size[0] // 8


class FreeScale:
    """The FreeScale method (`methods.base.Method`)."""

    params = FreeScaleParams
    tabs = ("txt2img",)

    def presets(self, family: object) -> tuple[str, ...]:
        return ("official", "8k", "custom")

    def plan(self, params: FreeScaleParams, given: frozenset[str], job: JobContext) -> MethodPlan:
        params = resolve(params, given)
        multiple = unet_multiple(job.family)
        if job.hires is None:
            target, base = job.first, base_size(job.first.width, job.first.height, job.native, multiple)
            field, reference = "Width and Height", f"the model's native {job.native}x{job.native}"
        else:
            target, base = job.hires, (job.first.width, job.first.height)
            field, reference = "Hires upscale / Resize width and height", f"the first pass's {base[0]}x{base[1]}"
        sizes = stage_sizes((target.width, target.height), base, multiple, params.stages)
        if not sizes:
            return MethodPlan({}, params, warnings=(
                f"FreeScale not applied: {field} {target.width}x{target.height} must have more pixels than "
                f"{reference} ({base[0] * base[1]} px); FreeScale upscales a base image to the target",))
        steps = target.steps
        start = min(schedule_index(params.restart, steps), steps - 1)
        dilated = max(0, schedule_index(params.dilation_end, steps) - start)
        detail = Detail(params.detail, params.background_detail, decode_mask(params.mask) if params.mask else None)
        sdxl = (sizes[0][1], sizes[0][0]) if job.family is ModelFamily.SDXL else None
        attention = () if job.unet_map is None else tuple(
            path for block in job.unet_map.blocks for path in block.self_attention)
        warnings: list[str] = []
        stages, described = [], []
        for size in sizes[1:]:
            latent = _latent(size)
            factor = size[0] // job.native
            dilation = None
            if params.dilation and factor > 1 and dilated > 0 and job.unet_map is not None:
                resolution = Resolution("FreeScale", dilated_blocks(job.unet_map, factor), dilated / (steps - start),
                                        False, {}, 0.0, ())
                try:
                    dilation = bind(resolution, job.unet_map, latent)
                except SettingError as exc:
                    warnings.append(f"FreeScale: no restrained dilation at {size[0]}x{size[1]}: {exc}")
            fusion = ScaleFusion(latent, scale_numbers((size[1], size[0]), job.native), job.native_latent,
                                 params.blur == "hwc") if params.fusion else None
            stages.append(Stage(latent, steps, start, Upscaling(detail, dilation, fusion, attention, sdxl, job.seed),
                                upscale="rgb", encode="sample", clamp=False))
            dilates = params.dilation and factor > 1 and dilated > 0 and (dilation is not None or job.unet_map is None)
            described.append(self._describe(size, factor if dilates else 1, fusion, start, dilated, steps))
        mask = f", region mask (background {params.background_detail:g})" if detail.mask is not None else ""
        tail = f"; detail control {params.detail:g}{mask}"
        if job.hires is None:
            base_plan = None if sdxl is None else FixedHooks(PassHooks(call_hooks=(size_hook(sdxl),)))
            passes: dict[str, Any] = {"first": CascadePlan((Stage(_latent(base), steps, 0, base_plan), *stages), True)}
            lines: tuple[str, ...] = (f"first pass {target.width}x{target.height}: base {base[0]}x{base[1]}, then "
                                      f"{'; '.join(described)}{tail}",)
        else:
            passes = {"hires": CascadePlan(tuple(stages), False)}
            lines = (f"hires pass {target.width}x{target.height}: {'; '.join(described)}{tail}; hires upscaler and "
                     "denoising strength not used",)
        notes = {"region mask": "sha256 " + hashlib.sha256(params.mask.encode()).hexdigest()[:16]} if params.mask else {}
        return MethodPlan(passes, params, notes=notes, lines=lines, warnings=tuple(warnings))

    @staticmethod
    def _describe(size: tuple[int, int], factor: int, fusion: ScaleFusion | None, start: int, dilated: int,
                  steps: int) -> str:
        parts = []
        if factor > 1:
            parts.append(f"dilation {factor} on {dilated} step{'s' if dilated != 1 else ''}")
        if fusion is not None:
            grid = _latent(size)
            windows = token_windows(grid, grid, fusion.scale, fusion.native_latent)
            drawn = overlap_grid(*grid, windows.size, windows.stride)
            parts.append(f"scale fusion on {len({w.top for w in drawn})}x{len({w.left for w in drawn})} windows")
        return f"{size[0]}x{size[1]} from step {start + 1} of {steps}" + (f" ({', '.join(parts)})" if parts else "")
