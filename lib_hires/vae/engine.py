"""Runs a compiled VAE over a grid of tiles, one pass per barrier (tiled_vae.md §1.4, §4.2).

Each pass takes the tiles one at a time to the compute device, applies the pass's ops, hands the
core to the barrier (statistics) and parks the result; when all tiles are parked the barrier
finishes (pooled statistics, halo exchange) and the next pass starts. Only one tile's working set is
on the compute device at any time. Progress is reported and the interrupt checked between tiles.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .compute import Compute
from .errors import NonFiniteError, TiledVAEInterrupted
from .grid import Grid
from .network import Program
from .ops import Tile

ProgressCallback = Callable[[int, int], None]
"""Called after every tile step with (steps done, total steps); total = tiles x passes."""

InterruptCheck = Callable[[], bool]
"""Called before every tile step; returning True raises ``TiledVAEInterrupted``."""


def run_tiles(program: Program, x: Tensor, grid: Grid, compute: Compute, *,
              progress: ProgressCallback | None = None,
              should_interrupt: InterruptCheck | None = None) -> Tensor:
    """The program's output for ``x`` (``B, C, H, W`` on any device), assembled from the tiles'
    cores on the park device and returned on ``x``'s device."""
    tiles = [Tile(r, c, compute.park(x[(..., *grid.window(r, c).slices)])) for r, c in grid.tiles()]
    total, done = len(tiles) * len(program.stages), 0
    out: Tensor | None = None
    for stage in program.stages:
        grid_out = grid
        for op in stage.ops:
            grid_out = op.grid_after(grid_out)
        for tile in tiles:
            if should_interrupt is not None and should_interrupt():
                raise TiledVAEInterrupted(f"tiled VAE interrupted after {done} of {total} tile steps")
            h, tile.data = compute.load(tile.data), None
            tile_grid = grid
            for op in stage.ops:
                h = op.apply(h, tile, tile_grid, compute)
                tile_grid = op.grid_after(tile_grid)
            core = h[(..., *grid_out.core_in_window(tile.row, tile.col))]
            if stage.barrier is not None:
                stage.barrier.collect(core)
                tile.data = compute.park(h)
                if tile.shortcut is not None:
                    tile.shortcut = compute.park(tile.shortcut)
            else:
                if out is None:
                    out = core.new_empty(*core.shape[:2], grid_out.height, grid_out.width,
                                         device=compute.park_device)
                out[(..., *grid_out.core(tile.row, tile.col).slices)] = core
            del h, core
            done += 1
            if progress is not None:
                progress(done, total)
        if stage.barrier is not None:
            stage.barrier.finish(grid_out, [tile.data for tile in tiles])
        grid = grid_out
    if not torch.isfinite(out).all():
        raise NonFiniteError("Tiled VAE: the output contains NaN or inf. This is usually an fp16 VAE "
                             "overflowing: retry with the fp32 fallback (upcast=True).")
    return out.to(x.device)
