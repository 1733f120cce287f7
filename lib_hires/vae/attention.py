"""Single-head softmax attention over a whole feature map, in bounded memory.

The VAE's mid-block ``AttnBlock`` (tiled_vae.md §1.2) attends from every pixel to every pixel of the
latent-resolution map. Every official tiled VAE runs it per tile (§1.4, §2, §4.4), which changes
the result; here the queries of one tile attend to the keys/values of *all* tiles' cores. The
``(queries x keys)`` score matrix is never materialised: queries are processed in chunks and
keys/values streamed in chunks with an online softmax (running max, normaliser and weighted sum,
as in Milakov & Gimelshein 2018 / FlashAttention), all in fp32.
"""
from __future__ import annotations

import torch
from torch import Tensor

SCORE_ELEMENTS = 1 << 24
"""Score-matrix elements computed at once (64 MiB in fp32): the attention's working-memory bound."""

KEY_CHUNK = 16384
"""Keys and values moved to the compute device and scored at once (at most)."""


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, *, score_elements: int = SCORE_ELEMENTS,
                      key_chunk: int = KEY_CHUNK) -> Tensor:
    """``softmax(q k^T / sqrt(C)) v`` for ``q`` ``(B, Nq, C)`` and ``k``, ``v`` ``(B, Nk, C)``.

    ``k`` and ``v`` may live on another device than ``q`` (e.g. parked on the CPU): each chunk is
    moved to ``q``'s device when it is used. Returns fp32 ``(B, Nq, C)`` on ``q``'s device; the
    scale ``1/sqrt(C)`` is LDM ``AttnBlock``'s.
    """
    batch, n_queries, channels = q.shape
    n_keys = k.shape[1]
    key_chunk = max(1, min(n_keys, key_chunk))
    query_chunk = max(1, min(n_queries, score_elements // (batch * key_chunk)))
    out = torch.empty(batch, n_queries, v.shape[2], device=q.device, dtype=torch.float32)
    for q0 in range(0, n_queries, query_chunk):
        queries = q[:, q0:q0 + query_chunk].float() * channels ** -0.5
        running_max = torch.full(queries.shape[:2], -torch.inf, device=q.device)
        normaliser = torch.zeros(queries.shape[:2], device=q.device)
        weighted = torch.zeros(batch, queries.shape[1], v.shape[2], device=q.device)
        for k0 in range(0, n_keys, key_chunk):
            keys = k[:, k0:k0 + key_chunk].to(q.device, torch.float32)
            values = v[:, k0:k0 + key_chunk].to(q.device, torch.float32)
            scores = torch.bmm(queries, keys.transpose(1, 2))
            new_max = torch.maximum(running_max, scores.amax(dim=2))
            probs = scores.sub_(new_max[:, :, None]).exp_()
            correction = torch.exp(running_max - new_max)
            normaliser = normaliser.mul_(correction).add_(probs.sum(dim=2))
            weighted = weighted.mul_(correction[:, :, None]).baddbmm_(probs, values)
            running_max = new_max
        out[:, q0:q0 + query_chunk] = weighted.div_(normaliser[:, :, None])
    return out
