"""GroupNorm with statistics pooled exactly over many tiles (synchronised GroupNorm).

ScaleCrafter App. A.3 ("compute the mean and std using all tiles instead of only the current one");
tiled_vae.md §4.3. Unlike the official tiled VAEs (§1.4 averages per-tile variances and counts
overlap pixels twice; §2 pools about the global mean), the statistics here are those of the whole
map: each tile contributes its core only (cores partition the map), and per-tile (count, mean, M2)
are merged with Chan et al.'s parallel formula, which includes the between-tile term and is
numerically stable. Everything is accumulated in fp32, also for fp16/bf16 activations; the variance
is biased and the module's own ``eps`` and affine are applied, exactly like ``nn.GroupNorm``.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class GroupStats:
    """Per (sample, group) pixel count, mean and sum of squared deviations ``m2``, fp32 ``(B, G)``."""

    count: int
    mean: Tensor
    m2: Tensor

    @classmethod
    def of(cls, x: Tensor, num_groups: int) -> GroupStats:
        """Statistics of ``x`` (``B, C, H, W``, any float dtype, may be a strided view) in fp32."""
        grouped = x.float().unflatten(1, (num_groups, -1))
        variance, mean = torch.var_mean(grouped, dim=(2, 3, 4), correction=0)
        count = grouped[0, 0].numel()
        return cls(count, mean, variance * count)

    def merge(self, other: GroupStats) -> GroupStats:
        """Statistics of the union of both pixel sets (Chan, Golub & LeVeque 1979, pairwise update)."""
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta.square() * (self.count * other.count / count)
        return GroupStats(count, mean, m2)

    @property
    def variance(self) -> Tensor:
        """Biased variance, as ``nn.GroupNorm`` uses."""
        return self.m2 / self.count

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.mean).all() and torch.isfinite(self.m2).all())


def merge_stats(parts: Iterable[GroupStats]) -> GroupStats:
    """The pooled statistics of several disjoint pixel sets."""
    return functools.reduce(GroupStats.merge, parts)


def apply_group_norm(x: Tensor, stats: GroupStats, norm: nn.GroupNorm) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with pooled ``stats``, cast to ``x``'s dtype.

    Computed as ``x * a + b`` with ``a = weight / sqrt(var + eps)`` and ``b = bias - mean * a`` from
    the fp32 statistics (one fused pass, as PyTorch's own GroupNorm kernel does); the whole of ``x``
    is normalised, core and halo alike.
    """
    per_group = x.shape[1] // norm.num_groups
    scale = torch.rsqrt(stats.variance + norm.eps).repeat_interleave(per_group, dim=1).to(x.device)
    if norm.affine:
        scale = scale * norm.weight.to(x.device, torch.float32)
    shift = -stats.mean.repeat_interleave(per_group, dim=1).to(x.device) * scale
    if norm.affine:
        shift = shift + norm.bias.to(x.device, torch.float32)
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None]).to(x.dtype)


def pooled_group_norm(parts: Sequence[Tensor], norm: nn.GroupNorm,
                      cores: Sequence[tuple[slice, slice]] | None = None) -> list[Tensor]:
    """Normalise pieces of one feature map as ``norm`` would normalise the whole map.

    ``parts`` are ``(B, C, h_i, w_i)`` tensors. Without ``cores`` they must partition the map; with
    ``cores``, ``parts[i][..., cores[i]]`` are the disjoint pixels that count for the statistics
    (e.g. tile windows whose halos overlap their neighbours) and every part is normalised whole.
    """
    regions = parts if cores is None else [part[(..., *core)] for part, core in zip(parts, cores)]
    stats = merge_stats(GroupStats.of(region, norm.num_groups) for region in regions)
    return [apply_group_norm(part, stats, norm) for part in parts]
