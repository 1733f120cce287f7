"""Where and in which precision the tiled VAE math runs, and where tiles wait between passes.

tiled_vae.md §4.2 (tiles parked on the CPU between GroupNorm passes, so the accelerator holds one
tile at a time) and §1.5/issue 4 (fp16 VAEs overflow: an fp32 fallback). With ``upcast`` every tile
is computed in fp32 with fp32 copies of the conv weights, made once per run and kept here, never
written into the modules; otherwise each conv is the module's own call.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Compute:
    """The compute device, the park device for tiles between passes, and the fp32 upcast switch."""

    device: torch.device
    park_device: torch.device
    upcast: bool
    _fp32_weights: dict[nn.Conv2d, tuple[Tensor, Tensor | None]] = field(default_factory=dict)

    def load(self, t: Tensor) -> Tensor:
        """A parked tensor on the compute device (in fp32 when upcasting)."""
        return t.to(self.device, torch.float32) if self.upcast else t.to(self.device)

    def park(self, t: Tensor) -> Tensor:
        """``t`` moved to the park device (a no-op when that is the compute device)."""
        return t.to(self.park_device)

    def conv(self, conv: nn.Conv2d, x: Tensor) -> Tensor:
        """``conv(x)``; when upcasting, the same convolution with fp32 weights on fp32 ``x``."""
        if not self.upcast:
            return conv(x)
        if conv not in self._fp32_weights:
            bias = None if conv.bias is None else conv.bias.to(self.device, torch.float32)
            self._fp32_weights[conv] = conv.weight.to(self.device, torch.float32), bias
        weight, bias = self._fp32_weights[conv]
        return conv._conv_forward(x, weight, bias)
