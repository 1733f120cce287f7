"""The steps a compiled VAE applies to one tile, and the synchronisation points between passes.

tiled_vae.md §1.2 (the LDM network as a task list) and §4. A ``TileOp`` maps one tile's window to
the next activation's window on the compute device; a ``Barrier`` ends a pass: every tile must have
reached it before any tile continues. ``NormSync`` is the GroupNorm barrier (pooled statistics over
all cores, then the halo exchange of ``grid.py``); ``AttentionKeys`` collects the mid-block
attention's keys and values from all cores before any query is answered.

The ops call the modules' own submodules (``conv1``, ``q``, ``upsample.conv``...) or use their
weights read-only; nothing is patched. Per-run state (pooled statistics, keys) lives in the op
objects, which are built afresh for every call (``network.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import chunked_attention
from .compute import Compute
from .errors import NonFiniteError
from .grid import Box, Grid, exchange_halos
from .groupnorm import GroupStats, apply_group_norm


@dataclass(eq=False)
class Tile:
    """One tile's parked state: its current window and, inside a ResnetBlock, the block's shortcut."""

    row: int
    col: int
    data: Tensor | None
    shortcut: Tensor | None = None


class TileOp:
    """One step on one tile's window (on the compute device)."""

    def apply(self, x: Tensor, tile: Tile, grid: Grid, compute: Compute) -> Tensor:
        raise NotImplementedError

    def grid_after(self, grid: Grid) -> Grid:
        """The grid of the output (the same unless the op changes the resolution)."""
        return grid


class Barrier:
    """The end of a pass; the base class only waits for all tiles."""

    def collect(self, core: Tensor) -> None:
        """Called with each tile's core at the end of its pass."""

    def finish(self, grid: Grid, windows: Sequence[Tensor]) -> None:
        """Called once all tiles are parked, with their windows in ``grid.tiles()`` order."""


@dataclass(eq=False)
class Conv(TileOp):
    """A convolution of the module tree (3x3 with zero padding 1 keeps the window's size)."""

    module: nn.Conv2d

    def apply(self, x: Tensor, tile: Tile, grid: Grid, compute: Compute) -> Tensor:
        return compute.conv(self.module, x)


@dataclass(eq=False)
class Call(TileOp):
    """A pointwise function or module (``ResnetBlock.dropout``, identity in eval; ``tanh_out``)."""

    fn: Callable[[Tensor], Tensor]

    def apply(self, x: Tensor, tile: Tile, grid: Grid, compute: Compute) -> Tensor:
        return self.fn(x)


@dataclass(eq=False)
class NormSync(Barrier):
    """A GroupNorm synchronised over all tiles (ScaleCrafter App. A.3; tiled_vae.md §4.3).

    ``collect`` merges each tile's core statistics; ``finish`` fixes the pooled statistics, checks
    them for NaN/inf and refreshes every halo from the neighbours' cores.
    """

    norm: nn.GroupNorm
    name: str
    stats: GroupStats | None = field(default=None, init=False)
    _pending: GroupStats | None = field(default=None, init=False)

    def collect(self, core: Tensor) -> None:
        part = GroupStats.of(core, self.norm.num_groups)
        self._pending = part if self._pending is None else self._pending.merge(part)

    def finish(self, grid: Grid, windows: Sequence[Tensor]) -> None:
        self.stats, self._pending = self._pending, None
        if not self.stats.is_finite():
            raise NonFiniteError(
                f"Tiled VAE: NaN or inf values reach {self.name}. This is usually an fp16 VAE "
                "overflowing: retry with the fp32 fallback (upcast=True), or use an fp32 / fp16-fixed VAE.")
        exchange_halos(grid, windows)

    def normalize(self, x: Tensor) -> Tensor:
        return apply_group_norm(x, self.stats, self.norm)


@dataclass(eq=False)
class Normalize(TileOp):
    """The synchronised GroupNorm applied to the whole window, optionally followed by SiLU."""

    sync: NormSync
    silu: bool

    def apply(self, x: Tensor, tile: Tile, grid: Grid, compute: Compute) -> Tensor:
        y = self.sync.normalize(x)
        return F.silu(y, inplace=True) if self.silu else y


@dataclass(eq=False)
class SaveShortcut(TileOp):
    """Keeps a ResnetBlock's shortcut: ``nin_shortcut``/``conv_shortcut`` (narrower) or the input."""

    module: nn.Conv2d | None

    def apply(self, x: Tensor, tile: Tile, grid: Grid, compute: Compute) -> Tensor:
        tile.shortcut = x if self.module is None else compute.conv(self.module, x)
        return x


class AddShortcut(TileOp):
    """``shortcut + h`` at the end of a ResnetBlock (in place on ``h``, the fresh ``conv2`` output)."""

    def apply(self, x: Tensor, tile: Tile, grid: Grid, compute: Compute) -> Tensor:
        shortcut, tile.shortcut = compute.load(tile.shortcut), None
        return x.add_(shortcut)


@dataclass(eq=False)
class Upsample(TileOp):
    """LDM ``Upsample``: nearest x2, then its 3x3 ``conv``, computed only over the next window.

    The next window (core x2 + halo) is the nearest-x2 image of the current core + halo/2, which the
    current window covers with a valid margin (see ``grid.HALO``).
    """

    conv: nn.Conv2d

    def apply(self, x: Tensor, tile: Tile, grid: Grid, compute: Compute) -> Tensor:
        target = self.grid_after(grid).window(tile.row, tile.col)
        source = Box(target.top // 2, target.bottom // 2, target.left // 2, target.right // 2)
        crop = x[(..., *source.within(grid.window(tile.row, tile.col)))]
        return compute.conv(self.conv, F.interpolate(crop, scale_factor=2.0, mode="nearest"))

    def grid_after(self, grid: Grid) -> Grid:
        return grid.upsampled()


@dataclass(eq=False)
class Downsample(TileOp):
    """LDM ``Downsample``: zero pad (0,1,0,1), then its 3x3 stride-2 ``conv``.

    The window starts on an even pixel (cores are aligned, the halo is even), so the tile's output
    lies on the global stride-2 grid. It is zero-padded to the next window; that ring is halo, which
    the GroupNorm synchronisation that always follows in the LDM encoder overwrites.
    """

    conv: nn.Conv2d

    def apply(self, x: Tensor, tile: Tile, grid: Grid, compute: Compute) -> Tensor:
        window = grid.window(tile.row, tile.col)
        target = self.grid_after(grid).window(tile.row, tile.col)
        y = compute.conv(self.conv, F.pad(x, (0, 1, 0, 1)))
        top, left = window.top // 2, window.left // 2
        return F.pad(y, (left - target.left, target.right - left - y.shape[-1],
                         top - target.top, target.bottom - top - y.shape[-2]))

    def grid_after(self, grid: Grid) -> Grid:
        return grid.downsampled()


@dataclass(eq=False)
class AttentionKeys(Barrier):
    """Keys and values of all tiles' cores, ``(B, N, C)`` on the park device, for ``Attend``."""

    keys: Tensor | None = None
    values: Tensor | None = None
    filled: int = 0

    def add(self, k: Tensor, v: Tensor, total: int, compute: Compute) -> None:
        """Append one core's ``(B, C, h, w)`` keys and values (``total``: pixels of the whole map)."""
        k, v = (compute.park(t.flatten(2).transpose(1, 2)) for t in (k, v))
        if self.keys is None:
            self.keys = k.new_empty(k.shape[0], total, k.shape[2])
            self.values = v.new_empty(v.shape[0], total, v.shape[2])
        self.keys[:, self.filled:self.filled + k.shape[1]] = k
        self.values[:, self.filled:self.filled + v.shape[1]] = v
        self.filled += k.shape[1]


@dataclass(eq=False)
class KeyValue(TileOp):
    """First attention pass: the core's keys and values into ``AttentionKeys``; ``x`` is kept."""

    block: nn.Module
    sync: NormSync
    store: AttentionKeys

    def apply(self, x: Tensor, tile: Tile, grid: Grid, compute: Compute) -> Tensor:
        h = self.sync.normalize(x[(..., *grid.core_in_window(tile.row, tile.col))])
        self.store.add(compute.conv(self.block.k, h), compute.conv(self.block.v, h),
                       grid.height * grid.width, compute)
        return x


@dataclass(eq=False)
class Attend(TileOp):
    """Second attention pass: ``x + proj_out(softmax(q k^T / sqrt(C)) v)`` for the window's queries
    against the keys of the whole map (LDM ``AttnBlock``, chunked: ``attention.py``)."""

    block: nn.Module
    sync: NormSync
    store: AttentionKeys

    def apply(self, x: Tensor, tile: Tile, grid: Grid, compute: Compute) -> Tensor:
        q = compute.conv(self.block.q, self.sync.normalize(x))
        batch, channels, height, width = q.shape
        out = chunked_attention(q.flatten(2).transpose(1, 2), self.store.keys, self.store.values)
        out = out.transpose(1, 2).reshape(batch, channels, height, width).to(q.dtype)
        return x + compute.conv(self.block.proj_out, out)
