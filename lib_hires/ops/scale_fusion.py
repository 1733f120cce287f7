"""FreeScale's scale fusion of self-attention (Qiu et al., 2024, §3.3 "Scale Fusion"; methods/freescale.md §4).

In an upscaling stage every self-attention layer runs twice on its normalised tokens:

* *local*: on overlapping windows of the layer's token grid, each the token grid a native-size image has
  at that layer (stride half a window, jittered by up to 1/8 of a window, border-aware, on a grid
  zero-padded by the jitter), the outputs averaged where windows overlap;
* *global*: on all tokens at once;

and the layer's output is the low frequencies of the local result with the high frequencies of the
global one (§4.3):

    fused = G(local) + global - G(global) = global + G(local - global),

G a Gaussian low-pass (`gaussian_lowpass`: kernel `2 max(s_h, s_w) - 1`, sigma 1, zero padding) over
(h, w, C), as the official code's HEAD, or over (h, w) only, as the paper describes (§4.4).

Geometry (§4.1): the stage's integer *scale numbers* `s = size // native` per axis; the base window, in
latent pixels, is the native latent side on the axis with the larger scale number and the native side
times `s_h / s_w` on the other; a token covers `latent / tokens` latent pixels per axis. For square
stages the window is the layer's grid divided by s, and there are `2 s - 1` windows per axis.

Everything here takes the layer's attention as a callable, so it works with whatever attention
implementation the host installed; the global branch calls it on blocks of queries (all tokens as the
context) when the full score matrix would exceed `SCORE_BUDGET` elements.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .windows import Window, jitter, overlap_grid

SCORE_BUDGET = 2**29  # attention scores (rows x heads x queries x keys) one global call may hold
Attend = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (queries, context or None) -> output


def scale_numbers(size: tuple[int, int], native: int) -> tuple[int, int]:
    """(s_h, s_w) = (height // native, width // native) of a stage of `size` (height, width) pixels, at
    least 1 (the official `current_hw // 1024`)."""
    return max(1, size[0] // native), max(1, size[1] // native)


def blur_kernel_size(scale: tuple[int, int]) -> int:
    """The low-pass kernel size `2 max(s_h, s_w) - 1` (3 at 2x, 7 at 4x)."""
    return 2 * max(scale) - 1


@dataclass(frozen=True)
class TokenWindows:
    """The local windows of one layer: its token grid (h, w), window size, stride and jitter per axis."""

    grid: tuple[int, int]
    size: tuple[int, int]
    stride: tuple[int, int]
    jitter: tuple[int, int]

    def draw(self, rng: random.Random) -> list[Window]:
        """The jittered windows of one call, in the coordinates of the grid padded by `jitter`."""
        return jitter(overlap_grid(*self.grid, self.size, self.stride), *self.grid, self.jitter, rng)


def token_windows(grid: tuple[int, int], latent: tuple[int, int], scale: tuple[int, int],
                  native_latent: int) -> TokenWindows:
    """The windows of a layer whose token grid is `grid` in a stage whose latent is `latent` (h, w) with
    scale numbers `scale` (§4.1; per-axis token sizes, equal to the official single one on exact
    multiples of the native size)."""
    ratio = scale[0] / scale[1]
    sub = (native_latent, int(native_latent / ratio)) if ratio > 1 else (int(native_latent * ratio), native_latent)
    per_token = (latent[0] / grid[0], latent[1] / grid[1])
    size = tuple(max(1, int(s / t)) for s, t in zip(sub, per_token))
    stride = tuple(max(1, int((s // 2) / t)) for s, t in zip(sub, per_token))
    return TokenWindows(grid, (size[0], size[1]), (stride[0], stride[1]), (size[0] // 8, size[1] // 8))


def token_grid(tokens: int, latent: tuple[int, int], levels: int = 4) -> tuple[int, int] | None:
    """The (h, w) token grid of a layer with `tokens` tokens in a UNet fed a latent of `latent`: the
    feature map of the level whose size matches (each downsampler halves, rounding up); None if none."""
    h, w = latent
    for _ in range(levels):
        if h * w == tokens:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return None


def gaussian_lowpass(x: torch.Tensor, size: int, sigma: float = 1.0, channels: bool = True) -> torch.Tensor:
    """G: a separable Gaussian blur of `x` (B, h, w, C) with a `size`-tap kernel of `sigma`, zero padding,
    over h, w and (if `channels`) C, per batch element: the official 3-D kernel (the outer product of the
    normalised 1-D one) applied axis by axis, as a weighted sum of shifted copies (far cheaper than a
    one-channel conv3d on the CPU). Computed in float32, returned in `x`'s dtype."""
    taps = torch.arange(size, dtype=torch.float64)
    kernel = torch.exp(-(taps - (size - 1) / 2) ** 2 / (2 * sigma**2))
    weights = (kernel / kernel.sum()).tolist()
    out = x.float()
    for dim in (1, 2, 3) if channels else (1, 2):
        pad = [0] * 6
        pad[2 * (3 - dim)] = pad[2 * (3 - dim) + 1] = size // 2  # F.pad lists the last dimension first
        padded = F.pad(out, pad)
        length = out.shape[dim]
        out = padded.narrow(dim, 0, length) * weights[0]
        for tap, weight in enumerate(weights[1:], start=1):
            out.add_(padded.narrow(dim, tap, length), alpha=weight)
    return out.to(x.dtype)


def local_attention(attend: Attend, x: torch.Tensor, windows: TokenWindows, drawn: Sequence[Window]) -> torch.Tensor:
    """The local branch: `attend` on every window of the zero-padded token grid (all windows in one batch),
    averaged per token where they overlap, the padding cropped. `x`: (B, h*w, C)."""
    b, _, c = x.shape
    (h, w), (jh, jw) = windows.grid, windows.jitter
    padded = F.pad(x.reshape(b, h, w, c), (0, 0, jw, jw, jh, jh))
    batch = torch.cat([padded[:, win.slices[0], win.slices[1]].reshape(b, -1, c) for win in drawn])
    out = attend(batch, None)
    value = torch.zeros(padded.shape, dtype=out.dtype, device=out.device)
    count = torch.zeros(padded.shape[1:3], dtype=out.dtype, device=out.device)
    for k, win in enumerate(drawn):
        rows, cols = win.slices
        value[:, rows, cols] += out[k * b:(k + 1) * b].reshape(b, win.height, win.width, c)
        count[rows, cols] += 1
    value, count = value[:, jh:jh + h, jw:jw + w], count[jh:jh + h, jw:jw + w]
    return torch.where(count[None, :, :, None] > 0, value / count.clamp_min(1)[None, :, :, None], value)


def global_attention(attend: Attend, x: torch.Tensor, heads: int, budget: int = SCORE_BUDGET) -> torch.Tensor:
    """The global branch: self-attention over all tokens of `x` (B, N, C), in blocks of queries against all
    N keys when `B heads N^2` exceeds `budget` (the same result; no N x N score matrix at once)."""
    b, n, _ = x.shape
    chunk = max(1, budget // max(1, b * heads * n))
    if chunk >= n:
        return attend(x, None)
    return torch.cat([attend(x[:, start:start + chunk], x) for start in range(0, n, chunk)], dim=1)


def fuse(local: torch.Tensor, global_: torch.Tensor, kernel: int, channels: bool = True) -> torch.Tensor:
    """`G(local) + global - G(global)`, computed as `global + G(local - global)` (G is linear); both (B, h, w, C)."""
    return global_ + gaussian_lowpass(local - global_, kernel, 1.0, channels).to(global_.dtype)


@dataclass(frozen=True)
class ScaleFusion:
    """Scale fusion for one stage: its latent (h, w), scale numbers, native latent side and low-pass axes."""

    latent: tuple[int, int]
    scale: tuple[int, int]
    native_latent: int
    channels: bool = True  # G over (h, w, C) (official HEAD) or (h, w) (paper)

    def __call__(self, attend: Attend, x: torch.Tensor, heads: int, rng: random.Random) -> torch.Tensor | None:
        """The fused self-attention of the normalised tokens `x` (B, N, C); None when N is not one of this
        stage's token grids (the caller then runs the plain attention). At scale numbers (1, 1) G has one
        tap, the identity, so the fused result is the local one and the global attention is skipped."""
        grid = token_grid(x.shape[1], self.latent)
        if grid is None:
            return None
        windows = token_windows(grid, self.latent, self.scale, self.native_latent)
        b, _, c = x.shape
        local = local_attention(attend, x, windows, windows.draw(rng))
        kernel = blur_kernel_size(self.scale)
        if kernel == 1:
            return local.reshape(b, -1, c)
        global_ = global_attention(attend, x, heads).reshape(b, *grid, c)
        return fuse(local.to(global_.dtype), global_, kernel, self.channels).reshape(b, -1, c)
