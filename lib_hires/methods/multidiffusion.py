"""MultiDiffusion (Bar-Tal et al., ICML 2023): the latent is denoised in overlapping windows and the
windows' predictions averaged, every step, on a fixed grid (`ops.windows.overlap_grid`, stride = tile
- overlap; methods/README.md §2 rows 20-22). The explicit-overlap baseline FSTD is measured against,
and the local branch of DemoFusion/AccDiffusion. In k-diffusion form the denoised predictions are
averaged, which equals averaging the noise predictions (same x and sigma for every window).
"""
from __future__ import annotations

from collections.abc import Sequence

from ..ops.windows import Window, overlap_grid
from ..params import TABS, MultiDiffusionParams
from ..sampling.steps import Step
from ..sampling.tiled import TiledPlan
from .base import JobContext, MethodPlan
from .fstd import grid_text


class MultiDiffusion:
    """The MultiDiffusion method (`methods.base.Method`)."""

    params = MultiDiffusionParams
    tabs = TABS

    def presets(self, family: object) -> tuple[str, ...]:
        return ()

    def plan(self, params: MultiDiffusionParams, given: frozenset[str], job: JobContext) -> MethodPlan:
        tile = params.tile_size or job.native_latent
        overlap = params.overlap or tile // 2
        resolved = MultiDiffusionParams(params.apply_to, tile, overlap, params.blending, params.tile_batch)
        selected = job.selected(params.apply_to)
        if not selected:
            return MethodPlan({}, resolved, warnings=("MultiDiffusion is set to the hires pass but hires fix is off",))
        if overlap >= tile:
            return MethodPlan({}, resolved, warnings=(
                f"MultiDiffusion not applied: the overlap ({overlap} latent px) must be smaller than the tile "
                f"({tile} latent px)",))
        stride = tile - overlap

        def windows_for(step: Step, latent: tuple[int, int]) -> Sequence[Window]:
            return overlap_grid(*latent, tile, stride)

        plan = TiledPlan(windows_for, params.blending, params.tile_batch)
        lines = tuple(f"{size.name} pass {size.width}x{size.height}: "
                      f"{grid_text(overlap_grid(*size.latent, tile, stride), size.latent, tile)}, overlap {overlap}, "
                      f"{params.blending} blending, batch {params.tile_batch}" for size in selected)
        return MethodPlan({size.name: plan for size in selected}, resolved, lines=lines)
