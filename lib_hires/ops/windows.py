"""Windows on a latent: tile grids, jitter, blending weights, FSTD's shared offsets (pure functions).

Three grids, each a list of `Window`s (top-left corner and size, in latent pixels) that together
cover a latent of `height` x `width`:

* `overlap_grid` (MultiDiffusion, DemoFusion's local branch, methods/demofusion.md §3.1; FreeScale's
  rectangular token windows): windows of `size` every `stride` pixels, `int((h - S) / stride - 1e-6)
  + 2` per axis when the latent is larger than the window, the last one shifted back to end at the far
  border. Neighbours overlap by `size - stride` (or more at the far border); every pixel is covered.
* `offset_grid` (FSTD, methods/any-size-diffusion-fstd.md §2): `ceil(h / T) x ceil(w / T)` tiles of
  size T, the whole grid shifted by one offset `(oy, ox)` and every tile clamped inside the latent.
  Tiles overlap only where the last one is clamped back; the strip `[0, oy)` / `[0, ox)` along the
  top/left is covered by no tile.
* `jitter` (DemoFusion §3.1): moves every window of an overlap grid by a random amount in
  `[-J, J]`, one-sided at the borders, on a latent padded by `J` on every side.

Blending weights are uniform or the Gaussian of Mixture of Diffusers that the official FSTD code uses
(`gaussian_weights`); `blend_sum` adds them up over a grid so that a caller can normalise per pixel.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    """A rectangle of a latent: rows `[top, top + height)`, columns `[left, left + width)`."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    def shifted(self, dy: int, dx: int) -> Window:
        return Window(self.top + dy, self.left + dx, self.height, self.width)


def _overlap_starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    count = int((length - size) / stride - 1e-6) + 2
    return [min(k * stride, length - size) for k in range(count)]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


def overlap_grid(height: int, width: int, size: int | tuple[int, int], stride: int | tuple[int, int]) -> list[Window]:
    """Windows of `size` (clipped to the latent) every `stride` pixels, row by row; see the module docstring.
    A pair gives (rows, columns) for rectangular windows (FreeScale's token windows)."""
    (size_h, size_w), (stride_h, stride_w) = _pair(size), _pair(stride)
    if min(size_h, size_w, stride_h, stride_w) < 1:
        raise ValueError(f"window size and stride must be >= 1, got {size} and {stride}")
    h, w = min(size_h, height), min(size_w, width)
    return [Window(top, left, h, w) for top in _overlap_starts(height, size_h, stride_h)
            for left in _overlap_starts(width, size_w, stride_w)]


def offset_grid(height: int, width: int, size: int, offset: tuple[int, int] = (0, 0)) -> list[Window]:
    """FSTD's tiles: `ceil(h / T) x ceil(w / T)` tiles of `size`, shifted by `offset` = (oy, ox) and
    clamped inside the latent (methods/any-size-diffusion-fstd.md §2, step 2)."""
    if size < 1:
        raise ValueError(f"tile size must be >= 1, got {size}")
    h, w = min(size, height), min(size, width)
    oy, ox = offset
    rows, cols = math.ceil(height / size), math.ceil(width / size)
    return [Window(min(max(a * size + oy, 0), height - h), min(max(b * size + ox, 0), width - w), h, w)
            for a in range(rows) for b in range(cols)]


def fstd_offsets(seed: int, steps: int, offset_range: int, period: int) -> list[tuple[int, int]]:
    """FSTD's shared grid offset for each step: (oy, ox) uniform in `[0, offset_range)` per axis, and
    (0, 0) on steps 0, P, 2P, ... (methods/any-size-diffusion-fstd.md §2, step 1; the official code
    draws unseeded, here the stream is seeded from the image seed). Every step draws, so the offsets of
    the other steps do not depend on `period`."""
    if offset_range < 1 or period < 1:
        raise ValueError(f"offset range and period must be >= 1, got {offset_range} and {period}")
    rng = random.Random(seed)
    offsets = []
    for step in range(steps):
        drawn = (rng.randrange(offset_range), rng.randrange(offset_range))
        offsets.append((0, 0) if step % period == 0 else drawn)
    return offsets


def jitter(windows: Sequence[Window], height: int, width: int, amount: int | tuple[int, int],
           rng: random.Random) -> list[Window]:
    """DemoFusion's border-aware jitter (methods/demofusion.md §3.1) of windows on a `height` x `width`
    latent, returned in the coordinates of that latent padded by `amount` on every side.

    Per axis: a window spanning the whole axis does not move; one touching the near border moves by
    `randint(-J, 0)`, one touching the far border by `randint(0, J)`, any other by `randint(-J, J)`.
    So every window stays inside the padded latent and no window moves off the image by more than J.
    A pair gives J per axis (rows, columns).
    """
    amount_h, amount_w = _pair(amount)

    def move(start: int, size: int, length: int, amount: int) -> int:
        near, far = start == 0, start + size == length
        if near and far:
            return 0
        if near:
            return rng.randint(-amount, 0)
        if far:
            return rng.randint(0, amount)
        return rng.randint(-amount, amount)

    moved = []
    for window in windows:
        dx = move(window.left, window.width, width, amount_w)  # columns first: the official draw order, so
        dy = move(window.top, window.height, height, amount_h)  # a generator seeded alike gives its windows
        moved.append(window.shifted(dy + amount_h, dx + amount_w))
    return moved


def gaussian_weights(height: int, width: int) -> torch.Tensor:
    """The Mixture-of-Diffusers tile weight the official FSTD code uses (spec §2, step 4): a product of
    Gaussians with variance 0.01 T^2, centred at (T - 1) / 2 across the columns and T / 2 down the rows
    (the official asymmetry, kept), unnormalised. Shape (height, width), float64."""
    var = 0.01

    def bell(length: int, mid: float) -> torch.Tensor:
        u = torch.arange(length, dtype=torch.float64)
        return torch.exp(-(u - mid) ** 2 / (length * length) / (2 * var)) / math.sqrt(2 * math.pi * var)

    return bell(height, height / 2)[:, None] * bell(width, (width - 1) / 2)[None, :]


def window_weights(window: Window, kind: str) -> torch.Tensor:
    """A window's blending weights: "uniform" (ones) or "gaussian" (`gaussian_weights`), float64."""
    if kind == "uniform":
        return torch.ones(window.height, window.width, dtype=torch.float64)
    if kind == "gaussian":
        return gaussian_weights(window.height, window.width)
    raise ValueError(f"weights must be 'uniform' or 'gaussian', got {kind!r}")


def blend_sum(windows: Sequence[Window], height: int, width: int, kind: str) -> torch.Tensor:
    """The sum of the windows' weights at every latent pixel (0 where no window covers it), float64."""
    total = torch.zeros(height, width, dtype=torch.float64)
    for window in windows:
        rows, cols = window.slices
        total[rows, cols] += window_weights(window, kind)
    return total
