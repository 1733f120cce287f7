"""FSTD, Fast Seamless Tiled Diffusion (Any-Size-Diffusion, Zheng et al., AAAI 2024, stage II):
implicit-overlap tiled sampling (methods/any-size-diffusion-fstd.md §2 and §4).

Every step evaluates `ceil(h/T) x ceil(w/T)` non-overlapping tiles, the whole grid shifted by one
random offset below `R` per axis (unshifted on steps 0, P, 2P, ...), so tile borders move from step to
step and no overlap is needed: the same number of UNet evaluations as plain tiling, without its seams.
The top/left strip the shifted grid leaves uncovered takes the previous step's stitched noise
prediction (`sampling.tiled`). Deviations from the official code, all deliberate:

* the offsets are drawn from a generator seeded with the image seed (official: unseeded `random`);
* the offset belongs to the sampler *step*: every model call of one step (second-order samplers call
  the model twice, ancestral ones once) sees the same grid; the official DDPM sampler makes one call
  per step, so this is the same there;
* tiles are conditioned on the user's prompt and the img2img latent (official: StableSR's structure
  condition on the low-resolution latent and an empty prompt), and on SDXL get their crop coordinates.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ..ops.windows import Window, fstd_offsets, offset_grid
from ..params import TABS, FSTDParams
from ..sampling.steps import Step
from ..sampling.tiled import TiledPlan
from .base import JobContext, MethodPlan


def grid_text(windows: Sequence[Window], latent: tuple[int, int], tile: int) -> str:
    """'4x3 tiles of 64 latent px': columns x rows, like an image size (a tile clipped to a smaller latent
    is given as width x height)."""
    rows = len({w.top for w in windows})
    cols = len(windows) // max(rows, 1)
    side = f"{min(tile, latent[1])}x{min(tile, latent[0])}" if min(latent) < tile else f"{tile}"
    return f"{cols}x{rows} tiles of {side} latent px"


class FSTD:
    """The FSTD method (`methods.base.Method`)."""

    params = FSTDParams
    tabs = TABS

    def presets(self, family: object) -> tuple[str, ...]:
        return ()

    def plan(self, params: FSTDParams, given: frozenset[str], job: JobContext) -> MethodPlan:
        tile = params.tile_size or job.native_latent
        reach = params.offset_range or max(tile // 2, 1)
        resolved = FSTDParams(params.apply_to, tile, reach, params.reset_period, params.blending, params.tile_batch)
        selected = job.selected(params.apply_to)
        if not selected:
            return MethodPlan({}, resolved, warnings=("FSTD is set to the hires pass but hires fix is off",))
        if reach > tile:
            return MethodPlan({}, resolved, warnings=(
                f"FSTD not applied: the offset range ({reach} latent px) must not exceed the tile ({tile} latent px)",))
        offsets: list[tuple[int, int]] = []

        def windows_for(step: Step, latent: tuple[int, int]) -> Sequence[Window]:
            if len(offsets) <= step.index:
                offsets[:] = fstd_offsets(job.seed, max(step.count, step.index + 1), reach, params.reset_period)
            return offset_grid(*latent, tile, offsets[step.index])

        lines = []
        for size in selected:
            unshifted = math.ceil(size.steps / params.reset_period)
            lines.append(f"{size.name} pass {size.width}x{size.height}: {grid_text(offset_grid(*size.latent, tile), size.latent, tile)}, "
                         f"batch {params.tile_batch}, offsets below {reach} latent px, {unshifted} of {size.steps} "
                         f"steps unshifted (every {params.reset_period}{_nth(params.reset_period)})")
        plan = TiledPlan(windows_for, params.blending, params.tile_batch)
        return MethodPlan({size.name: plan for size in selected}, resolved, lines=tuple(lines))


def _nth(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
