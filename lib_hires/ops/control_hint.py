"""A ControlNet hint through the geometry of every UNet evaluation (pure functions on pixel tensors).

A ControlNet's hint is an image at the VAE's scale (8) times the latent: latent pixel (i, j) is hint
pixels `[8i, 8i + 8) x [8j, 8j + 8)`, its *block*. When a method evaluates the UNet on something other
than the pass's whole latent, the hint must undergo the same geometry, block for block, so that every
latent pixel the UNet sees comes with the hint of the image pixels it stands for:

* `crop`: a tile or window (MultiDiffusion, FSTD's shifted tiles, DemoFusion's local windows);
* `pad`: latent pixels the method pads with zeros (DemoFusion's jitter margin, the lattice padding)
  get a zero hint (black: no control signal there);
* `lattice`: the sub-lattice `(a, b)` at scale `s` of dilated sampling: the lattice's latent pixel
  (i, j) is the latent's `(a + s i, b + s j)`, so it gets that pixel's block (a block gather; a pixel
  stride would give it hint pixels of its neighbours);
* `blur`: the Gaussian a method blurs its UNet input with, measured in hint pixels (DemoFusion blurs
  the latent before taking the lattices: kernel `k` and sigma in latent pixels become `8 (k - 1) + 1`
  and `8 sigma`);
* `permute_blocks`: AccDiffusion's window interaction moves latent pixels between the lattices of a
  batch; with one permutation per position (shared by the channels) the blocks move with them. An
  element-wise permutation gives one position's channels different sources, which no hint can follow
  (the caller uses the position-wise form while a ControlNet is attached, and says so);
* `resize`: a cascade stage or hires pass sampled at a size other than the hint's (bilinear, with
  antialiasing when shrinking): the same picture at the stage's size.

Every function takes and returns `(rows, channels, height, width)` tensors of hint pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dilated_sampling import gaussian_blur
from .windows import Window

SCALE = 8  # hint pixels per latent pixel (the VAE's factor)


def crop(hint: torch.Tensor, window: Window, scale: int = SCALE) -> torch.Tensor:
    """The blocks of `window` (latent pixels)."""
    return hint[..., window.top * scale:(window.top + window.height) * scale,
                window.left * scale:(window.left + window.width) * scale]


def pad(hint: torch.Tensor, top: int, bottom: int, left: int, right: int, scale: int = SCALE) -> torch.Tensor:
    """Zero blocks around the hint, as many as the latent is padded with (latent pixels per side)."""
    return F.pad(hint, (left * scale, right * scale, top * scale, bottom * scale))


def lattice(hint: torch.Tensor, scale_factor: int, a: int, b: int, scale: int = SCALE) -> torch.Tensor:
    """The blocks of sub-lattice `(a, b)` at `scale_factor` (the hint's latent size a multiple of it)."""
    rows, channels, height, width = hint.shape
    blocks = hint.reshape(rows, channels, height // scale, scale, width // scale, scale)
    taken = blocks[:, :, a::scale_factor, :, b::scale_factor, :]
    return taken.reshape(rows, channels, taken.shape[2] * scale, taken.shape[4] * scale)


def blur(hint: torch.Tensor, size: int, sigma: float, scale: int = SCALE) -> torch.Tensor:
    """The latent's Gaussian blur (kernel `size`, `sigma`, in latent pixels) in hint pixels."""
    if sigma <= 0:
        return hint
    return gaussian_blur(hint, scale * (size - 1) + 1, sigma * scale)


def permute_blocks(views: torch.Tensor, order: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Blocks of a batch of views `(V, rows, C, 8h, 8w)` moved with the latent's position-wise permutation
    `order` `(V, rows, c, h, w)` (equal over `c`): `out[v, ..., block p] = views[order[v, p], ..., block p]`."""
    if not bool((order == order[:, :, :1]).all()):
        raise ValueError("a hint can follow a permutation of positions, not one per channel")
    index = order[:, :, :1].repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return torch.gather(views, 0, index.expand(*views.shape).to(views.device))


def resize(hint: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The hint at `height` x `width` hint pixels (unchanged when it already is)."""
    if tuple(hint.shape[-2:]) == (height, width):
        return hint
    shrink = height < hint.shape[-2] or width < hint.shape[-1]
    return F.interpolate(hint, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
