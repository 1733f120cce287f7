"""DemoFusion's skip residual and its cosine schedule (Du et al., CVPR 2024, §3.2 "skip residual";
methods/demofusion.md §2-§3).

Within an upscaling phase every step first pulls the latent toward the upscaled previous phase, noised
to the current level with the phase's one noise draw:

    z <- (1 - c1) z + c1 zhat_t,    zhat_t = z0_up + sigma_t eps,    c1 = cf(t)^alpha1,

with the cosine factor of the model's training timestep t (T = 1000)

    cf(t) = (1 + cos(pi (T - t) / T)) / 2     (about 1 at the noisiest step, 0 at the last).

The same factor weights the dilated global branch (`c2 = cf^alpha2`) and sets its blur
(`c3 = 0.99 cf^alpha3 + 0.01`). After a phase the latent is re-standardised to the mean and standard
deviation of the first phase's result (`restandardise`).

FreeScale's *detail control* (§3.2; methods/freescale.md §2) is the same pull with `c = cf(t)^alpha`,
from the step its stage restarts at, and its image-generation variant makes alpha a per-pixel map
(a foreground and a background value): `c1` may then be a tensor that broadcasts over the latent.
"""
from __future__ import annotations

import math

import torch

TRAIN_STEPS = 1000


def cosine_factor(timestep: float, train_steps: int = TRAIN_STEPS) -> float:
    """cf(t) = (1 + cos(pi (T - t) / T)) / 2."""
    return 0.5 * (1.0 + math.cos(math.pi * (train_steps - timestep) / train_steps))


def skip_residual(z: torch.Tensor, clean: torch.Tensor, noise: torch.Tensor, sigma: float,
                  c1: float | torch.Tensor) -> torch.Tensor:
    """(1 - c1) z + c1 (clean + sigma noise); `c1` a number or a tensor broadcasting over `z`."""
    return (1.0 - c1) * z + c1 * (clean + sigma * noise)


def restandardise(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`x` shifted and scaled so that each image (row) has the mean and standard deviation of the same
    row of `like` (the official code's scalar `(z - mean) / std * anchor_std + anchor_mean`, per image;
    unbiased std as `torch.std`). Computed in float32, returned in `x`'s dtype."""
    dims = tuple(range(1, x.dim()))
    xf, lf = x.float(), like.float()
    mean, std = xf.mean(dims, keepdim=True), xf.std(dims, keepdim=True)
    return ((xf - mean) / std * lf.std(dims, keepdim=True) + lf.mean(dims, keepdim=True)).to(x.dtype)
