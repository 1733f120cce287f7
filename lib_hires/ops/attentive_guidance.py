"""AP-LDM's attentive guidance (Cao et al., 2024, §3.2, Eq. 2-3; methods/ap-ldm.md §2.3-2.4).

Parameter-free self-attention (PFSA) treats each latent pixel's C-vector as query, key and value at
once: per image, with X the (HW x C) matrix of the latent,

    PFSA(x) = softmax(X X^T / lambda) X,    lambda = sqrt(C)  (row-wise softmax),

and the guided latent is `x + gamma (PFSA(x) - x)`. It runs on the sampler's latent after a step, in
the k-diffusion parameterisation `x = x0 + sigma eps` (the one the official Euler pipeline uses; the
softmax is not scale-invariant). The guided steps are a delay `eta1` after the start, up to an end,
with the scale decaying as the paper's Eq. 3 / the official cosine decay:
`gamma_j = gamma ((cos(pi j / (n - 1)) + 1) / 2)^beta` over the n guided steps (`beta` 0: constant).
"""
from __future__ import annotations

import math

import torch

QUERY_CHUNK = 4096  # query rows per softmax block: (chunk x HW) scores at a time


def pfsa(x: torch.Tensor, scale: float | None = None, chunk: int = QUERY_CHUNK) -> torch.Tensor:
    """PFSA of a latent batch (N, C, H, W), computed in float32 in blocks of `chunk` queries (so the
    (HW)^2 score matrix never exists at once); `scale` is lambda (default sqrt(C))."""
    n, c, h, w = x.shape
    lam = math.sqrt(c) if scale is None else scale
    tokens = x.float().reshape(n, c, h * w).transpose(1, 2)  # (N, HW, C)
    out = torch.empty_like(tokens)
    for start in range(0, h * w, chunk):
        scores = tokens[:, start:start + chunk] @ tokens.transpose(1, 2) / lam  # (N, chunk, HW)
        out[:, start:start + chunk] = scores.softmax(dim=-1) @ tokens
    return out.transpose(1, 2).reshape(n, c, h, w).to(x.dtype)


def guide(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """The guided latent `x + gamma (PFSA(x) - x)` (Eq. 2)."""
    return x + gamma * (pfsa(x) - x)


def guided_steps(count: int, delay: float, end: float) -> range:
    """The steps (0 = noisiest of `count`) whose result is guided: from `round(delay count)` to
    `round(end count) - 1`. The paper's delay 0.06 of 50 steps guides steps 3..49 (the official
    density `[1]*47 + [0]*3`); the official notebook's window, end 0.38, guides 3..18."""
    return range(min(round(delay * count), count), min(round(end * count), count))


def guidance_scales(gamma: float, guided: int, beta: float) -> list[float]:
    """The scale of each of `guided` consecutive guided steps: `gamma` at the first, cosine-decayed to 0
    at the last with exponent `beta` (0: constant), as the official `('cosine', 0, beta)` decay."""
    if beta == 0 or guided == 1:
        return [gamma] * guided
    return [gamma * ((math.cos(math.pi * j / (guided - 1)) + 1) / 2) ** beta for j in range(guided)]
