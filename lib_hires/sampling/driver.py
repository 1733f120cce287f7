"""The stage driver: runs a cascade of sampling stages on a host, as hires fix does.

Stage 0 samples from noise at its size over the whole schedule. Every later stage upscales the
previous result in latent space, re-noises it to `sigmas[start]` with fresh seeded noise
(`x0 + sigma * eps`, the k-diffusion form of the official pipelines' `add_noise`; methods/README.md
§5) and samples the rest of the same schedule. Each stage may bring its own hooks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..host import Host
from .hooks import PassHooks


@dataclass(frozen=True)
class Stage:
    """One stage: its latent size (height, width), the schedule index it starts at, its hooks."""

    size: tuple[int, int]
    start: int = 0
    hooks: PassHooks = field(default_factory=PassHooks)
    upscale: str = "bicubic"  # latent interpolation from the previous stage


def upscale_latent(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a latent to `size` (align_corners=False, as DemoFusion's latent upsampling)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False if mode in ("bilinear", "bicubic") else None)


def run_stages(host: Host, stages: Sequence[Stage], sigmas: torch.Tensor, channels: int = 4) -> torch.Tensor:
    """Run `stages` in order and return the last stage's latent.

    Stops after the current stage (returning its result) when the host reports an interrupt.
    """
    if not stages:
        raise ValueError("run_stages needs at least one stage")
    if stages[0].start != 0:
        raise ValueError("the first stage starts from noise, at schedule index 0")
    last = sigmas.numel() - 1
    x = torch.empty(0)
    for index, stage in enumerate(stages):
        if not 0 <= stage.start < last:
            raise ValueError(f"stage {index} starts at schedule index {stage.start}; allowed: 0 to {last - 1}")
        shape = (host.batch_size, channels, *stage.size)
        if index == 0:
            x = host.noise(shape, stage=0) * sigmas[0]
        else:
            x = upscale_latent(x, stage.size, stage.upscale)
            x = x + host.noise(shape, stage=index).to(x) * sigmas[stage.start]
        x = host.sample(x, sigmas[stage.start:], stage.hooks, stage=index)
        if host.interrupted():
            break
    return x
