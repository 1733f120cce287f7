"""Tile geometry: cores that partition a feature map, windows = core + halo, and the halo exchange.

tiled_vae.md §1.3 (A1111 geometry: near-equal cores, no blending) and §4.1, with one change that
makes a small context exact: every tile window carries a halo of ``HALO`` pixels of the *current*
resolution, and at every GroupNorm (where all tiles are parked anyway) :func:`exchange_halos`
refreshes each halo from the neighbours' cores, which hold the exact values. Between two such
synchronisations the convolutions only corrupt a ring that is narrower than the halo (see ``HALO``),
so the cores stay exactly equal to the untiled feature map.

The grid follows the network through resolution changes: :meth:`Grid.upsampled` (decoder, nearest
x2) doubles every core boundary, :meth:`Grid.downsampled` (encoder, stride-2 conv) halves them, so
the cores keep partitioning the map at every level.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor

HALO = 2
"""Context pixels a window carries on each side that is not an image border, at every resolution.

Between two halo exchanges the LDM VAE applies (tiled_vae.md §1.2):

* GroupNorm, SiLU, one 3x3 conv, maybe a residual add: the conv makes the outermost ring of the
  window wrong, so a halo of 1 keeps the core exact;
* decoder, last block of a level then ``upsample``: 3x3 conv (valid margin h-1), nearest x2
  (margin 2(h-1)), 3x3 conv (2(h-1)-1): needs h >= 2;
* encoder, last block of a level then ``downsample`` (pad (0,1,0,1), 3x3 stride 2): 3x3 conv
  (margin h-1), then output pixel i reads inputs 2i..2i+2, so the right margin is
  floor((h-2)/2): needs h >= 2, and h even so that windows start on the stride-2 grid.

The mid-block attention is computed from all tiles' cores (no spatial context needed). A halo of 2
everywhere is therefore enough; image borders get the conv's own zero padding, as untiled.
"""


@dataclass(frozen=True)
class Box:
    """A half-open pixel rectangle ``[top, bottom) x [left, right)`` in map coordinates."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)

    def intersect(self, other: Box) -> Box | None:
        box = Box(max(self.top, other.top), min(self.bottom, other.bottom),
                  max(self.left, other.left), min(self.right, other.right))
        return box if box.bottom > box.top and box.right > box.left else None

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices of this box in a tensor covering the whole map."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def within(self, frame: Box) -> tuple[slice, slice]:
        """Row and column slices of this box inside a tensor that covers ``frame``."""
        return (slice(self.top - frame.top, self.bottom - frame.top),
                slice(self.left - frame.left, self.right - frame.left))


def split_axis(length: int, tile: int, align: int = 1) -> tuple[int, ...]:
    """Core boundaries ``0 = b0 < b1 < ... = length`` of near-equal cores of about ``tile`` pixels.

    tiled_vae.md §1.3 ("best tile size"): ``n = ceil(length / tile)`` cores of ``ceil(length / n)``
    pixels, rounded up to a multiple of ``align`` (the encoder needs cores on its stride-2 grids, i.e.
    multiples of 2**downsamples). A last core shorter than ``align`` is merged into its neighbour so
    that no core vanishes at the coarsest level.
    """
    if length < 1 or tile < 1 or align < 1:
        raise ValueError(f"length, tile and align must be >= 1, got {length}, {tile}, {align}")
    count = math.ceil(length / tile)
    step = math.ceil(math.ceil(length / count) / align) * align
    bounds = list(range(0, length, step))
    if len(bounds) > 1 and length - bounds[-1] < align:
        bounds.pop()
    return (*bounds, length)


@dataclass(frozen=True)
class Grid:
    """Cores ``rows[r]:rows[r+1] x cols[c]:cols[c+1]`` partitioning a ``height x width`` map.

    Tile ``(r, c)``'s window is its core grown by ``halo`` on every side, clamped to the map.
    """

    rows: tuple[int, ...]
    cols: tuple[int, ...]
    halo: int = HALO

    @classmethod
    def split(cls, height: int, width: int, tile: int, align: int = 1) -> Grid:
        """The grid of near-equal cores of at most about ``tile`` pixels (:func:`split_axis`)."""
        return cls(split_axis(height, tile, align), split_axis(width, tile, align))

    @property
    def height(self) -> int:
        return self.rows[-1]

    @property
    def width(self) -> int:
        return self.cols[-1]

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return len(self.rows) - 1, len(self.cols) - 1

    def tiles(self) -> list[tuple[int, int]]:
        """All ``(row, col)`` indices in row-major order."""
        n_rows, n_cols = self.shape
        return [(r, c) for r in range(n_rows) for c in range(n_cols)]

    def core(self, r: int, c: int) -> Box:
        return Box(self.rows[r], self.rows[r + 1], self.cols[c], self.cols[c + 1])

    def window(self, r: int, c: int) -> Box:
        return Box(max(0, self.rows[r] - self.halo), min(self.height, self.rows[r + 1] + self.halo),
                   max(0, self.cols[c] - self.halo), min(self.width, self.cols[c + 1] + self.halo))

    def core_in_window(self, r: int, c: int) -> tuple[slice, slice]:
        """Slices of tile ``(r, c)``'s core inside a tensor holding its window."""
        return self.core(r, c).within(self.window(r, c))

    def cores_meeting(self, box: Box) -> Iterator[tuple[int, int]]:
        """Indices of the tiles whose core intersects ``box``."""
        r0, r1 = bisect.bisect_right(self.rows, box.top) - 1, bisect.bisect_left(self.rows, box.bottom)
        c0, c1 = bisect.bisect_right(self.cols, box.left) - 1, bisect.bisect_left(self.cols, box.right)
        return ((r, c) for r in range(r0, r1) for c in range(c0, c1))

    def upsampled(self) -> Grid:
        """The grid after nearest x2 upsampling: every boundary doubles (decoder ``up[i].upsample``)."""
        return Grid(tuple(2 * b for b in self.rows), tuple(2 * b for b in self.cols), self.halo)

    def downsampled(self) -> Grid:
        """The grid after LDM's pad (0,1,0,1) + 3x3 stride-2 conv: ``size -> size // 2``.

        Interior boundaries must be even (guaranteed by ``split_axis(..., align=2**downsamples)``).
        """
        if any(b % 2 for b in (*self.rows[1:-1], *self.cols[1:-1])):
            raise ValueError(f"interior core boundaries must be even to downsample: {self}")
        return Grid(tuple(b // 2 for b in self.rows), tuple(b // 2 for b in self.cols), self.halo)


def exchange_halos(grid: Grid, windows: Sequence[Tensor]) -> None:
    """Overwrite, in place, every window's halo with the owning neighbours' core pixels.

    ``windows[i]`` holds tile ``grid.tiles()[i]``'s window (any leading dims). Only halo pixels are
    written and only core pixels are read, and cores and halos never overlap, so the order of the
    copies does not matter. Cores narrower than the halo are handled: every core that meets a window
    contributes, not only the direct neighbours.
    """
    n_cols = grid.shape[1]
    for index, (r, c) in enumerate(grid.tiles()):
        window = grid.window(r, c)
        for r2, c2 in grid.cores_meeting(window):
            if (r2, c2) == (r, c):
                continue
            part = window.intersect(grid.core(r2, c2))
            source = windows[r2 * n_cols + c2]
            windows[index][(..., *part.within(window))] = source[(..., *part.within(grid.window(r2, c2)))]
