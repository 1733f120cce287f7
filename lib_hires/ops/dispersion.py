"""Dispersed convolution: the linear map R from a small kernel to a larger one (ScaleCrafter §3.3, App. F).

A dispersed kernel ``b`` (``large`` x ``large``) is obtained from a trained kernel ``a``
(``small`` x ``small``) as ``vec(b) = R vec(a)`` (row-major ``vec``), with ``R`` the least-squares
solution of two requirements that must hold for every input ``x`` and every kernel ``a``
(methods/scalecrafter.md §5.2):

* structure level: ``conv_b(U_s(x)) = U_s(conv_a(x))``, ``U_s`` the bilinear upsampling with a
  corner-aligned grid (an ``n`` x ``n`` input becomes ``s(n-1)+1`` x ``s(n-1)+1``, output pixel
  ``(i, j)`` samples the input at ``(i/s, j/s)``);
* pixel level: ``conv_b(x) = conv_a(x)`` on the original grid, weighted by ``eta``.

Convolutions are cross-correlations with zero "same" padding. Both sides are bilinear in ``x`` and
the kernel, so each requirement is matched coefficient by coefficient (the coefficient of
``x_p * kernel_q`` at every output pixel), which gives equations linear in ``R`` and free of ``x``
and ``a``. With the paper's parameters (3 -> 5, input 3, scale 2, eta 0.05) the result is the
official ``R20to1_new.mat`` (methods/scalecrafter.md §5.2).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _conv_coefficients(size: int, kernel: int) -> Tensor:
    """1-D "same" cross-correlation as coefficients ``T[o, p, q]`` of ``x_p * k_q`` in output ``o``."""
    centre = (kernel - 1) // 2
    o = torch.arange(size).view(-1, 1, 1)
    p = torch.arange(size).view(1, -1, 1)
    q = torch.arange(kernel).view(1, 1, -1)
    return (p == o + q - centre).to(torch.float64)


def _corner_aligned_bilinear(size: int, scale: int) -> Tensor:
    """1-D corner-aligned linear upsampling matrix ``(scale*(size-1)+1, size)``; zero outside the input."""
    positions = torch.arange(scale * (size - 1) + 1, dtype=torch.float64).view(-1, 1) / scale
    return (1 - (positions - torch.arange(size, dtype=torch.float64).view(1, -1)).abs()).clamp(min=0)


def _outer2d(coefficients: Tensor) -> Tensor:
    """Separable 2-D coefficients from 1-D ones: ``[(oi,oj)*(pi,pj), (qi,qj)]`` rows x kernel taps."""
    o, p, q = coefficients.shape
    full = torch.einsum("abc,def->adbecf", coefficients, coefficients)
    return full.reshape(o * o * p * p, q * q)


def _equations(lhs: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """Stack 1-D coefficient tensors into 2-D equation rows, dropping rows that are zero on both sides."""
    lhs2, rhs2 = _outer2d(lhs), _outer2d(rhs)
    keep = lhs2.any(dim=1) | rhs2.any(dim=1)
    return lhs2[keep], rhs2[keep]


def solve_dispersion(small: int = 3, large: int = 5, input_size: int = 3, scale: int = 2,
                     eta: float = 0.05) -> Tensor:
    """The dispersion transform ``R`` (float64, shape ``(large**2, small**2)``), ScaleCrafter App. F.

    ``vec(W_large) = R @ vec(W_small)`` with row-major ``vec``. ``input_size`` is the side of the
    symbolic input ``x`` (the official solver and its README use the small kernel size), ``scale``
    the structure-level upsampling factor and ``eta`` the weight of the pixel-level equations
    (methods/scalecrafter.md §5.2: the official ``R20to1_new`` is ``(3, 5, 3, 2, 0.05)``).
    """
    if small < 1 or large < 1 or small % 2 == 0 or large % 2 == 0:
        raise ValueError(f"kernel sizes must be odd and positive, got small={small}, large={large}")
    if input_size < 1 or scale < 1:
        raise ValueError(f"input_size and scale must be >= 1, got {input_size} and {scale}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")

    upsample = _corner_aligned_bilinear(input_size, scale)  # (m, n)
    upsampled_size = upsample.shape[0]
    # conv_b(U(x))[o] = sum_q b_q sum_u T[o, u, q] U[u, p] x_p
    structure_lhs = torch.einsum("ouq,up->opq", _conv_coefficients(upsampled_size, large), upsample)
    # U(conv_a(x))[o] = sum_o' U[o, o'] sum_r a_r T[o', p, r] x_p
    structure_rhs = torch.einsum("ov,vpr->opr", upsample, _conv_coefficients(input_size, small))
    a_struct, b_struct = _equations(structure_lhs, structure_rhs)
    a_pixel, b_pixel = _equations(_conv_coefficients(input_size, large),
                                  _conv_coefficients(input_size, small))

    a = torch.cat([a_struct, eta * a_pixel])
    b = torch.cat([b_struct, eta * b_pixel])
    return torch.linalg.lstsq(a, b, driver="gelsd").solution


def disperse_kernel(weight3: Tensor, R: Tensor) -> Tensor:
    """Dispersed kernels ``(out, in, L, L)`` from ``(out, in, S, S)``: ``vec(W_L) = R vec(W_S)`` per pair.

    ``R`` comes from :func:`solve_dispersion` (``(L*L, S*S)``). The product is computed in at least
    float32 (so half and float8 weights are transformed accurately) and returned in the weight's
    dtype, on its device (methods/scalecrafter.md §5.1).
    """
    if weight3.dim() != 4 or weight3.shape[-1] != weight3.shape[-2]:
        raise ValueError(f"expected a (out, in, k, k) conv weight, got shape {tuple(weight3.shape)}")
    small = weight3.shape[-1]
    large = round(R.shape[0] ** 0.5)
    if R.dim() != 2 or R.shape != (large * large, small * small):
        raise ValueError(f"R of shape {tuple(R.shape)} does not map {small}x{small} kernels to square ones")
    compute = torch.promote_types(weight3.dtype, torch.float32)
    flat = weight3.to(compute).reshape(*weight3.shape[:2], small * small)
    large_flat = flat @ R.to(device=weight3.device, dtype=compute).T
    return large_flat.reshape(*weight3.shape[:2], large, large).to(weight3.dtype)
