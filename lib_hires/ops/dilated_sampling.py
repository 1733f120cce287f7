"""DemoFusion's dilated sampling and AccDiffusion's window interaction (methods/demofusion.md §3.2,
methods/accdiffusion.md §5).

At scale s the latent (padded with zeros at the top and left to a multiple of s) is split into its s^2
sub-lattices `x[..., a::s, b::s]`: each is a whole-image latent at about the native size, so the UNet
sees global structure. Its input is blurred first (a normalised Gaussian of kernel 2s - 1, re-standardised
to the unblurred latent's statistics); the step itself is taken from the unblurred sub-lattice with the
noise predicted on the blurred one. The s^2 lattices partition the padded latent: every position lies in
exactly one.

Window interaction (AccDiffusion): before each UNet call of a batch of V sub-lattices, every element
(channel, y, x) of the batch is permuted among the V samples with its own random permutation; the
predictions are permuted back before the step, so each sample gets, per element, the prediction made
for the composite that held its value. The paper describes one permutation per spatial position (shared
by the channels), the official code one per element; both are offered (`element_permutations`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .skip_residual import restandardise


def lattice_padding(height: int, width: int, scale: int, multiple: int = 1) -> tuple[int, int]:
    """Rows and columns of zeros to add at the top and left so that both sides are multiples of
    `scale * multiple` (the official code pads to a multiple of `scale`; `multiple` keeps each
    sub-lattice a size the UNet runs at)."""
    unit = scale * multiple
    return (-height) % unit, (-width) % unit


def lattice_offsets(scale: int) -> list[tuple[int, int]]:
    """The s^2 sub-lattices (a, b), row by row."""
    return [(a, b) for a in range(scale) for b in range(scale)]


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-D kernel `exp(-(x - (size - 1) / 2)^2 / (2 sigma^2))`, float32."""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-x * x / (2 * sigma * sigma))
    return kernel / kernel.sum()


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable depthwise Gaussian blur with zero padding `size // 2` (float32 math)."""
    channels = x.shape[1]
    kernel = gaussian_kernel(size, sigma).to(x.device)
    xf = x.float()
    xf = F.conv2d(xf, kernel.view(1, 1, 1, size).repeat(channels, 1, 1, 1), padding=(0, size // 2), groups=channels)
    xf = F.conv2d(xf, kernel.view(1, 1, size, 1).repeat(channels, 1, 1, 1), padding=(size // 2, 0), groups=channels)
    return xf.to(x.dtype)


def blurred_input(x: torch.Tensor, scale: int, sigma: float) -> torch.Tensor:
    """The UNet input of the dilated branch at `scale`: `x` blurred with kernel 2s - 1 and `sigma`, then
    re-standardised per image to `x`'s mean and standard deviation."""
    return restandardise(gaussian_blur(x, 2 * scale - 1, sigma), x)


def element_permutations(views: int, shape: tuple[int, ...], generator: torch.Generator,
                         per_position: bool = False) -> torch.Tensor:
    """Independent random permutations of `views` samples: a LongTensor (views, *shape) whose column at
    every element is a permutation of 0..views-1. `shape` is (images, C, h, w); with `per_position`
    the channels share one permutation (the paper's position-wise bijection)."""
    draw = (*shape[:1], 1, *shape[2:]) if per_position else shape
    order = torch.rand((views, *draw), generator=generator).argsort(dim=0)
    return order.expand(views, *shape) if per_position else order


def permute(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """`out[v, e] = x[order[v, e], e]` (the shuffled inputs; `order` and `x` of the same shape)."""
    return torch.gather(x, 0, order)


def unpermute(y: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The inverse of `permute`: `out[order[v, e], e] = y[v, e]`."""
    return torch.empty_like(y).scatter_(0, order, y)
