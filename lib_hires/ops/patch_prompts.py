"""AccDiffusion's patch-content-aware prompts (Lin et al., ECCV 2024, §3.2; methods/accdiffusion.md §2-§4).

From the first phase's cross-attention maps (one (h, w) map per token of the prompt, averaged over the
layers at a quarter of the latent's resolution, their heads and every step) each token gets a binary
mask: the pixels above the map's mean, opened (erosion then dilation) with a 3x3 square `h // 16` times
(OpenCV's borders: the image border neither erodes nor dilates). In an upscaling phase the masks are
upsampled (nearest) to the latent, zero-padded like the latent of the local branch, and a window's
prompt keeps the tokens whose mask covers at least `threshold` of the window (`>=`, as the code).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .windows import Window


def opening_iterations(height: int) -> int:
    """The official `h_a // 16` iterations of the 3x3 erosion and of the dilation (2 at SDXL's 32x32
    maps, 1 at SD1.5's 16x16), at least 1."""
    return max(1, height // 16)


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """3x3 erosion of (N, 1, h, w) {0, 1} floats; outside the image counts as on (OpenCV's default)."""
    return 1 - F.max_pool2d(1 - mask, 3, stride=1, padding=1)


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """3x3 dilation; outside the image counts as off (max pooling's implicit -inf padding)."""
    return F.max_pool2d(mask, 3, stride=1, padding=1)


def word_masks(maps: torch.Tensor, iterations: int | None = None) -> torch.Tensor:
    """Binary masks (T, h, w) of token attention maps (T, h, w): `map > mean(map)` per token, then the
    morphological opening (`iterations` 3x3 erosions, then as many dilations)."""
    maps = maps.double()  # an exact mean: a constant map has no pixel above it
    mask = (maps > maps.mean(dim=(1, 2), keepdim=True)).float()[:, None]
    count = opening_iterations(maps.shape[1]) if iterations is None else iterations
    for _ in range(count):
        mask = _erode(mask)
    for _ in range(count):
        mask = _dilate(mask)
    return mask[:, 0] > 0.5


def window_coverage(masks: torch.Tensor, latent: tuple[int, int], pad: int,
                    windows: Sequence[Window]) -> torch.Tensor:
    """(windows, T): the share of each window that each token's mask covers, with the masks (T, h, w)
    upsampled (nearest) to the `latent` (height, width), zero-padded by `pad` on every side, and the
    windows in those padded coordinates."""
    up = F.interpolate(masks.float()[:, None], size=latent, mode="nearest")[:, 0]
    up = F.pad(up, (pad, pad, pad, pad))
    table = F.pad(up.double().cumsum(1).cumsum(2), (1, 0, 1, 0))  # summed-area table (T, H+1, W+1)
    shares = []
    for w in windows:
        b, r = w.top + w.height, w.left + w.width
        area = table[:, b, r] - table[:, w.top, r] - table[:, b, w.left] + table[:, w.top, w.left]
        shares.append(area / (w.height * w.width))
    return torch.stack(shares).float() if shares else torch.zeros(0, masks.shape[0])


def patch_tokens(coverage: torch.Tensor, threshold: float) -> list[tuple[int, ...]]:
    """Per window, the indices of the tokens whose coverage is at least `threshold` (in order)."""
    return [tuple(int(i) for i in torch.nonzero(row >= threshold - 1e-6).flatten()) for row in coverage]
