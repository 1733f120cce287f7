"""DemoFusion (Du et al., CVPR 2024): progressive upscaling in phases at multiples of the native size,
each phase a full schedule with skip residual, jittered local windows and dilated global sampling
(methods/demofusion.md; docs/demofusion.md). AccDiffusion (`methods.accdiffusion`) builds on this.

* Phases (§2): `n = int(long side / native)` (direct entry; the official truncation) phases; phase 1 at
  the target / n (sides rounded to the UNet's multiple), phase k at k times phase 1, the last exactly
  the target (ours: the official code ends at n x native, which may miss the requested size). The hires
  entry takes the first pass as phase 1 and `n = max(2, int(target / first pass))`.
* Between phases the latent is resized bicubically in latent space, re-noised with one noise draw per
  phase to the start of a full N-step schedule (`sampling.driver`).
* Every step of a phase k >= 2: the skip residual toward the upscaled latent noised to the step's level
  (`ops.skip_residual`), then one model call answered by the local and global branches
  (`sampling.local_global`) with lattice scale k. After the phase the latent is re-standardised to the
  first phase's statistics.
* SD1.x/SD2.x (spec §7, ours): windows of the native latent size S (64 / 96), stride S/2, jitter
  (S - stride) / 4. SDXL keeps the size conditioning the pass has (the target in the direct entry, as
  the official code), and each window gets its crop coordinates.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..ops.skip_residual import cosine_factor, restandardise, skip_residual
from ..ops.windows import Window, fstd_offsets, jitter, offset_grid, overlap_grid
from ..params import DemoFusionParams, fields
from ..patching import PatchScope
from ..sampling.driver import Stage, StageInput
from ..sampling.hooks import PassHooks, PassPlan, Warn
from ..sampling.local_global import GlobalBranch, LocalGlobal, step_seed
from ..sampling.steps import Step
from ..sampling.tiled import TiledEvaluation
from .apldm import unet_multiple
from .base import CascadePlan, JobContext, MethodPlan

OFFICIAL = {"residual_decay": 3.0, "global_decay": 1.0, "blur_decay": 1.0, "sigma": 0.8, "stride": 0}
"""The official README's values (methods/README.md §2 row 23); stride 0 = half a window."""
FSTD_PERIOD = 4  # FSTD local branch: every 4th step unshifted (the official FSTD period)


def resolve(params: DemoFusionParams, given: frozenset[str]) -> DemoFusionParams:
    """The preset's values, with every explicitly given field kept (preset Custom: all of them)."""
    if params.preset == "custom":
        return params
    keys = {f.name: f.api_key for f in fields(type(params))}
    return dataclasses.replace(params, **{name: value for name, value in OFFICIAL.items() if keys[name] not in given})


def round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def phase_sizes(target: tuple[int, int], first: tuple[int, int] | None, native: int,
                multiple: int) -> list[tuple[int, int]]:
    """(width, height) in pixels of every phase, the first included: see the module docstring. [] when the
    target is too small for two phases."""
    width, height = target
    if first is None:
        count = int(max(width, height) / native + 1e-9)
        if count < 2:
            return []
        first = (round_to(width / count, multiple), round_to(height / count, multiple))
    else:
        if width * height <= first[0] * first[1]:
            return []
        count = max(2, int(max(width / first[0], height / first[1]) + 1e-9))
    middle = [(min(k * first[0], width), min(k * first[1], height)) for k in range(2, count)]
    return [first, *middle, (width, height)]


@dataclass(frozen=True)
class Fusion:
    """The resolved settings of one job's upscaling phases."""

    window: int  # latent px
    stride: int
    view_batch: int
    local: str  # "overlap" or "fstd"
    residual_decay: float
    global_decay: float
    blur_decay: float
    sigma: float
    multiple: int  # the UNet's latent multiple
    seed: int
    interaction: str = "off"
    local_cfg_ratio: float = 1.0

    @property
    def jitter(self) -> int:
        """The jitter range J = (window - stride) // 4, also the zero padding of the local branch."""
        return (self.window - self.stride) // 4 if self.local == "overlap" else 0

    def windows(self, height: int, width: int, rng: random.Random) -> list[Window]:
        """Jittered overlapping windows, in the coordinates of the latent padded by `jitter`."""
        return jitter(overlap_grid(height, width, self.window, self.stride), height, width, self.jitter, rng)

    def evaluations(self, latent: tuple[int, int], scale: int) -> tuple[int, int]:
        """Windows and sub-lattices evaluated per model call of a phase at lattice `scale`."""
        count = len(overlap_grid(*latent, self.window, self.stride)) if self.local == "overlap" else \
            len(offset_grid(*latent, self.window))
        return count, scale * scale


@dataclass(frozen=True)
class Phase:
    """Upscaling phase `number` (>= 2): a `StageAware` plan (it needs the stage's clean latent and noise)."""

    number: int
    fusion: Fusion

    def for_stage(self, stage: StageInput) -> PassPlan:
        return PhaseHooks(self, stage)

    def local_branch(self, stage: StageInput, warn: Warn) -> TiledEvaluation:
        """The local branch's windowed evaluation: fresh jitter every step (or FSTD's shifted tiles)."""
        if self.fusion.local == "fstd":
            return TiledEvaluation(self.fstd_tiles(stage), "gaussian", self.fusion.view_batch)
        fusion, pad = self.fusion, self.fusion.jitter

        def windows(step: Step, padded: tuple[int, int]) -> Sequence[Window]:
            rng = random.Random(step_seed(fusion.seed, stage.index, step.index))
            return fusion.windows(padded[0] - 2 * pad, padded[1] - 2 * pad, rng)

        return TiledEvaluation(windows, "uniform", fusion.view_batch)

    def fstd_tiles(self, stage: StageInput) -> Callable[[Step, tuple[int, int]], Sequence[Window]]:
        """FSTD's tiles of each step (offsets seeded per stage, every FSTD_PERIOD-th step unshifted)."""
        fusion = self.fusion
        offsets: list[tuple[int, int]] = []

        def tiles(step: Step, latent: tuple[int, int]) -> Sequence[Window]:
            if len(offsets) <= step.index:
                offsets[:] = fstd_offsets(step_seed(fusion.seed, stage.index, 0), max(step.count, step.index + 1),
                                          max(fusion.window // 2, 1), FSTD_PERIOD)
            return offset_grid(*latent, fusion.window, offsets[step.index])

        return tiles


class PhaseHooks:
    """The hooks of one upscaling phase: skip residual at the start of every step, the local/global call
    hook, re-standardisation of the result."""

    def __init__(self, phase: Phase, stage: StageInput) -> None:
        if stage.clean is None or stage.previous is None:
            raise ValueError("a DemoFusion upscaling phase starts from the previous phase's latent")
        self.phase, self.stage = phase, stage
        self.clean, self.previous = stage.clean, stage.previous
        self.timesteps = [float(t) for t in stage.host.timestep(stage.sigmas.float())]

    def install(self, unet: nn.Module, scope: PatchScope, warn: Warn) -> PassHooks:
        phase, stage, fusion = self.phase, self.stage, self.phase.fusion
        hook = LocalGlobal(
            phase.local_branch(stage, warn), fusion.jitter,
            GlobalBranch(phase.number, fusion.sigma, fusion.blur_decay, fusion.view_batch, fusion.multiple,
                         fusion.interaction, fusion.seed),
            fusion.global_decay, stage.host.timestep, stage.index, fusion.local_cfg_ratio, warn)
        return PassHooks(step_hooks=(self.residual,), call_hooks=(hook,))

    def residual(self, x: torch.Tensor, step: Step) -> None:
        if step.index >= step.count:
            x.copy_(restandardise(x, self.previous))
        elif step.index > 0:
            c1 = cosine_factor(self.timesteps[step.index]) ** self.phase.fusion.residual_decay
            x.copy_(skip_residual(x, self.clean.to(x), self.stage.noise.to(x), float(self.stage.sigmas[step.index]), c1))


def _latent(size: tuple[int, int]) -> tuple[int, int]:
    return size[1] // 8, size[0] // 8


class DemoFusion:
    """The DemoFusion method (`methods.base.Method`)."""

    params: type[DemoFusionParams] = DemoFusionParams
    tabs = ("txt2img",)

    def presets(self, family: object) -> tuple[str, ...]:
        return ("official", "custom")

    def fusion(self, params: DemoFusionParams, job: JobContext) -> Fusion:
        window = job.native_latent
        return Fusion(window, params.stride or max(window // 2, 1), params.view_batch, params.local,
                      params.residual_decay, params.global_decay, params.blur_decay, params.sigma,
                      unet_multiple(job.family) // 8, job.seed)

    def parts(self, params: DemoFusionParams, fusion: Fusion) -> tuple[PassPlan | None, Callable[[int], Phase]]:
        """What the first phase hooks (None: the plain model) and the plan of upscaling phase k."""
        return None, lambda number: Phase(number, fusion)

    def plan(self, params: DemoFusionParams, given: frozenset[str], job: JobContext) -> MethodPlan:
        params = resolve(params, given)
        fusion = self.fusion(params, job)
        resolved = dataclasses.replace(params, stride=fusion.stride)
        title = type(params).TITLE
        if fusion.stride > fusion.window:
            return MethodPlan({}, resolved, warnings=(
                (f"{title} not applied: Window stride {fusion.stride} must not exceed the window "
                 f"({fusion.window} latent px, the model's native size)"),))
        multiple = unet_multiple(job.family)
        target = job.first if job.hires is None else job.hires
        first = None if job.hires is None else (job.first.width, job.first.height)
        sizes = phase_sizes((target.width, target.height), first, job.native, multiple)
        if not sizes:
            field, need = (("Width and Height", f"at least twice the model's native {job.native} px on the longer side")
                           if job.hires is None else
                           ("Hires upscale / Resize width and height", "more pixels than the first pass"))
            return MethodPlan({}, resolved, warnings=(
                f"{title} not applied: {field} {target.width}x{target.height} must be {need}",))
        steps = target.steps
        base, phase = self.parts(params, fusion)
        phases = [Stage(_latent(size), steps, 0, phase(k)) for k, size in enumerate(sizes[1:], start=2)]
        described = ", ".join(self._describe(stage, k, fusion) for k, stage in enumerate(phases, start=2))
        if job.hires is None:
            passes: dict[str, Any] = {"first": CascadePlan((Stage(_latent(sizes[0]), steps, 0, base), *phases), True)}
            lines: tuple[str, ...] = ((f"first pass {target.width}x{target.height}: phase 1 {sizes[0][0]}x"
                                       f"{sizes[0][1]}, then {described}; {steps} steps each"),)
        else:
            passes = {"hires": CascadePlan(tuple(phases), False)}
            if base is not None:
                passes["first"] = base
            lines = ((f"hires pass {target.width}x{target.height}: {described} after the first pass; {steps} steps "
                      "each; hires upscaler and denoising strength not used"),)
        return MethodPlan(passes, resolved, lines=lines + self.extra_lines(params))

    def extra_lines(self, params: DemoFusionParams) -> tuple[str, ...]:
        return ()

    @staticmethod
    def _describe(stage: Stage, number: int, fusion: Fusion) -> str:
        windows, lattices = fusion.evaluations(stage.size, number)
        kind = ("window" if fusion.local == "overlap" else "FSTD tile") + ("s" if windows != 1 else "")
        return (f"phase {number} {stage.size[1] * 8}x{stage.size[0] * 8} ({windows} {kind} + {lattices} "
                f"sub-lattices per step, by {fusion.view_batch})")
