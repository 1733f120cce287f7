"""Exact tiled VAE decode and encode with synchronised GroupNorm (issue 4; methods/tiled_vae.md §4).

Public API:

* :func:`tiled_decode` / :func:`tiled_encode`: ``decoder(z)`` / ``encoder(x)`` of an LDM VAE computed
  tile by tile, equal to the untiled result up to float rounding, with bounded memory;
  :func:`plan_decode` / :func:`plan_encode`: the tiling they would use (:class:`TilePlan`).
* :func:`pooled_group_norm` and :class:`GroupStats`: GroupNorm of a split feature map with exactly
  pooled statistics, usable on their own.
* :class:`TiledVAEInterrupted`, :class:`NonFiniteError`, :class:`UnsupportedVAE`.

Modules: ``grid`` (cores, halos, halo exchange), ``groupnorm`` (pooled statistics), ``attention``
(chunked whole-map attention), ``ops`` / ``network`` (the LDM network as passes of tile ops),
``engine`` (runs the passes), ``compute`` (devices, fp32 upcast), ``memory`` (auto tile size).
"""
from .errors import NonFiniteError, TiledVAEInterrupted, UnsupportedVAE
from .groupnorm import GroupStats, pooled_group_norm
from .tiled import TilePlan, plan_decode, plan_encode, tiled_decode, tiled_encode

__all__ = ["GroupStats", "NonFiniteError", "TilePlan", "TiledVAEInterrupted", "UnsupportedVAE",
           "plan_decode", "plan_encode", "pooled_group_norm", "tiled_decode", "tiled_encode"]
