"""Guidance combinations applied inside a batched model call, whatever CFG the host computes after it
(noise-damped CFG; AccDiffusion's patch CFG, `guidance_rescaled`).

Noise-damped CFG (ScaleCrafter §3.2, Eq. 6; methods/scalecrafter.md §4) replaces the unconditional
prediction of CFG by that of a less dilated ("noise-damped") UNet while keeping the guidance
direction of the strongly dilated one:

    D = D_u^nd + w (D~_c - D~_u)

The host computes `D_u + sum_k w_k (D_ck - D_u)` from the rows we return. Shifting *every* row of
an image (its cond rows and its uncond row) by the same `delta = D_u^nd - D~_u` turns the host's CFG
into exactly the formula above, for any guidance scale and any number of cond rows (the weights of
CFG sum to one). It holds on denoised outputs and on eps alike, since both are affine in the model
output for a fixed x and sigma.
"""
from __future__ import annotations

import torch

from .hooks import Rows


def noise_damped_cfg(out: torch.Tensor, rows: Rows, nd_uncond: torch.Tensor, nd_rows: Rows) -> torch.Tensor:
    """`out` (all rows of a call, from the dilated model) with every row of each image shifted by that
    image's `D_u^nd - D~_u`. `nd_uncond` holds the noise-damped model's outputs for the uncond rows
    `nd_rows`. Images without an uncond row in this call are left as they are."""
    shifted = out.clone()
    uncond_of = rows.uncond_of()
    for k, image in enumerate(nd_rows.image):
        delta = nd_uncond[k] - out[uncond_of[image]]
        for i, row_image in enumerate(rows.image):
            if row_image == image:
                shifted[i] += delta
    return shifted


def guidance_rescaled(out: torch.Tensor, rows: Rows, ratio: float) -> torch.Tensor:
    """Rows whose guidance direction is scaled by `ratio` (AccDiffusion's patch CFG): every cond row
    becomes `D_u + ratio (D_c - D_u)` with its image's uncond row, so that the host's CFG scale w acts
    as `ratio * w`. Images without an uncond row in the call are left as they are."""
    if ratio == 1.0:
        return out
    uncond_of = rows.uncond_of()
    scaled = out.clone()
    for i, (image, unc) in enumerate(zip(rows.image, rows.uncond)):
        if not unc and image in uncond_of:
            base = out[uncond_of[image]]
            scaled[i] = base + ratio * (out[i] - base)
    return scaled
