"""Compiles an LDM ``Decoder``/``Encoder`` into passes of tile ops separated by barriers.

tiled_vae.md §1.2: the network is traversed by attribute name (``conv_in``, ``mid.block_1``,
``mid.attn_1``, ``up[i].block[j]``, ``up[i].attn[j]``, ``up[i].upsample``, ``down[i].downsample``,
``norm_out``, ``conv_out``; ResnetBlock ``norm1 conv1 norm2 dropout conv2`` and
``nin_shortcut``/``conv_shortcut``; AttnBlock ``norm q k v proj_out``), the names A1111's LDM/SGM
modules and Forge's ``IntegratedAutoencoderKL`` share, and the forward order of LDM's ``model.py``
is reproduced. Every GroupNorm becomes a ``NormSync`` barrier (30 in SD's decoder, 22 in its
encoder) and every attention block one more barrier (keys before queries). Decoder and encoder
differ only in their traversal; everything else is shared.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnsupportedVAE
from .ops import (AddShortcut, Attend, AttentionKeys, Barrier, Call, Conv, Downsample, KeyValue,
                  Normalize, NormSync, SaveShortcut, TileOp, Upsample)


@dataclass
class Stage:
    """One pass over all tiles: ``ops`` per tile, then ``barrier`` (None: the output stage)."""

    ops: list[TileOp]
    barrier: Barrier | None


@dataclass
class Program:
    """A compiled VAE.

    ``align``: core boundaries must be multiples of it, in input pixels (2**downsamples, so that
    the cores stay on every stride-2 grid). ``peak_elements_per_pixel``: the largest (input +
    output channels) x (area relative to the input) over all convs, the basis of memory estimates.
    """

    stages: list[Stage]
    align: int
    peak_elements_per_pixel: float


def _require(module: nn.Module, name: str, *attributes: str) -> None:
    missing = [a for a in attributes if not hasattr(module, a)]
    if missing:
        raise UnsupportedVAE(f"{name} ({type(module).__name__}) has no {', '.join(missing)}: not an "
                             "LDM VAE layout the tiled VAE supports")


class _Builder:
    """Accumulates ops into stages while following the resolution of the activations."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []
        self.ops: list[TileOp] = []
        self.area = 1.0
        self.align = 1
        self.peak = 0.0

    def barrier(self, barrier: Barrier) -> None:
        self.stages.append(Stage(self.ops, barrier))
        self.ops = []

    def sync(self, norm: nn.GroupNorm, name: str) -> NormSync:
        sync = NormSync(norm, name)
        self.barrier(sync)
        return sync

    def track(self, conv: nn.Conv2d) -> None:
        """Account a conv's input + output activations at the current resolution."""
        self.peak = max(self.peak, (conv.in_channels + conv.out_channels) * self.area)

    def conv(self, module: nn.Conv2d) -> None:
        self.track(module)
        self.ops.append(Conv(module))

    def norm_act(self, norm: nn.GroupNorm, name: str) -> None:
        sync = self.sync(norm, name)
        self.ops.append(Normalize(sync, silu=True))

    def resnet(self, block: nn.Module, name: str) -> None:
        _require(block, name, "norm1", "conv1", "norm2", "conv2")
        sync1 = self.sync(block.norm1, f"{name}.norm1")
        shortcut = getattr(block, "nin_shortcut", None) or getattr(block, "conv_shortcut", None)
        self.ops += [SaveShortcut(shortcut), Normalize(sync1, silu=True)]
        self.conv(block.conv1)
        self.norm_act(block.norm2, f"{name}.norm2")
        if hasattr(block, "dropout"):
            self.ops.append(Call(block.dropout))
        self.conv(block.conv2)
        self.ops.append(AddShortcut())

    def attention(self, block: nn.Module, name: str) -> None:
        if isinstance(block, nn.Identity):
            return
        _require(block, name, "norm", "q", "k", "v", "proj_out")
        sync = self.sync(block.norm, f"{name}.norm")
        keys = AttentionKeys()
        self.ops.append(KeyValue(block, sync, keys))
        self.barrier(keys)
        self.ops.append(Attend(block, sync, keys))

    def level(self, level: nn.Module, name: str) -> None:
        """The ResnetBlocks of one resolution level, each followed by its attention block if any."""
        for j, block in enumerate(level.block):
            self.resnet(block, f"{name}.block.{j}")
            if len(level.attn) > 0:
                self.attention(level.attn[j], f"{name}.attn.{j}")

    def mid(self, mid: nn.Module) -> None:
        self.resnet(mid.block_1, "mid.block_1")
        self.attention(mid.attn_1, "mid.attn_1")
        self.resnet(mid.block_2, "mid.block_2")

    def upsample(self, module: nn.Module, name: str) -> None:
        _require(module, name, "conv")
        self.area *= 4
        self.track(module.conv)
        self.ops.append(Upsample(module.conv))

    def downsample(self, module: nn.Module, name: str) -> None:
        _require(module, name, "conv")
        self.track(module.conv)
        self.ops.append(Downsample(module.conv))
        self.area /= 4
        self.align *= 2

    def output(self, module: nn.Module) -> None:
        """``norm_out``, SiLU, ``conv_out``: the tail both LDM networks share."""
        self.norm_act(module.norm_out, "norm_out")
        self.conv(module.conv_out)

    def program(self) -> Program:
        return Program([*self.stages, Stage(self.ops, None)], self.align, self.peak)


def compile_decoder(decoder: nn.Module) -> Program:
    """The passes of LDM ``Decoder.forward`` (z after ``post_quant_conv`` -> image)."""
    _require(decoder, "decoder", "conv_in", "mid", "up", "norm_out", "conv_out")
    build = _Builder()
    build.conv(decoder.conv_in)
    build.mid(decoder.mid)
    for i in reversed(range(len(decoder.up))):
        build.level(decoder.up[i], f"up.{i}")
        if hasattr(decoder.up[i], "upsample"):
            build.upsample(decoder.up[i].upsample, f"up.{i}.upsample")
    if not getattr(decoder, "give_pre_end", False):
        build.output(decoder)
        if getattr(decoder, "tanh_out", False):
            build.ops.append(Call(torch.tanh))
    return build.program()


def compile_encoder(encoder: nn.Module) -> Program:
    """The passes of LDM ``Encoder.forward`` (image -> moments, before ``quant_conv``)."""
    _require(encoder, "encoder", "conv_in", "down", "mid", "norm_out", "conv_out")
    build = _Builder()
    build.conv(encoder.conv_in)
    for i, down in enumerate(encoder.down):
        build.level(down, f"down.{i}")
        if hasattr(down, "downsample"):
            build.downsample(down.downsample, f"down.{i}.downsample")
    build.mid(encoder.mid)
    build.output(encoder)
    return build.program()
