"""Public entry points: exact tiled decode and encode of an LDM VAE (issue 4; tiled_vae.md §4).

``tiled_decode(decoder, z)`` returns what ``decoder(z)`` returns and ``tiled_encode(encoder, x)``
what ``encoder(x)`` returns (the moments before ``quant_conv``), up to float rounding, for any size:
cores partition the map, windows carry a 2-pixel halo refreshed at every GroupNorm, GroupNorm
statistics are pooled over all cores and the mid-block attention sees the whole latent. The modules
are only called and read, never modified.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .compute import Compute
from .engine import InterruptCheck, ProgressCallback, run_tiles
from .grid import Grid
from .memory import auto_tile_size, should_offload
from .network import Program, compile_decoder, compile_encoder


@dataclass(frozen=True)
class TilePlan:
    """How a tiled run splits its input: ``grid`` (cores in input pixels: latent pixels for a
    decode, image pixels for an encode), the ``tile_size`` it came from, and whether tiles are parked
    on the CPU between passes (``offload``)."""

    grid: Grid
    tile_size: int
    offload: bool


def _device_and_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def _plan(program: Program, module: nn.Module, x: Tensor, tile_size: int | None, upcast: bool,
          offload: bool | None) -> TilePlan:
    device, dtype = _device_and_dtype(module)
    element_size = 4 if upcast else dtype.itemsize
    height, width = x.shape[-2:]
    tile = auto_tile_size(program, device, element_size) if tile_size is None else tile_size
    if offload is None:
        offload = should_offload(program, device, element_size, x.shape[0] * height * width)
    return TilePlan(Grid.split(height, width, tile, program.align), tile, offload)


def plan_decode(decoder: nn.Module, z: Tensor, *, tile_size: int | None = None, upcast: bool = False,
                offload: bool | None = None) -> TilePlan:
    """The tiling :func:`tiled_decode` would use for ``z`` with these arguments."""
    return _plan(compile_decoder(decoder), decoder, z, tile_size, upcast, offload)


def plan_encode(encoder: nn.Module, x: Tensor, *, tile_size: int | None = None, upcast: bool = False,
                offload: bool | None = None) -> TilePlan:
    """The tiling :func:`tiled_encode` would use for ``x`` with these arguments."""
    return _plan(compile_encoder(encoder), encoder, x, tile_size, upcast, offload)


def _tiled(compile_program: Callable[[nn.Module], Program], module: nn.Module, x: Tensor,
           tile_size: int | None, upcast: bool, offload: bool | None, progress: ProgressCallback | None,
           should_interrupt: InterruptCheck | None) -> Tensor:
    program = compile_program(module)
    plan = _plan(program, module, x, tile_size, upcast, offload)
    device, _ = _device_and_dtype(module)
    compute = Compute(device, torch.device("cpu") if plan.offload else device, upcast)
    with torch.no_grad():
        return run_tiles(program, x, plan.grid, compute, progress=progress, should_interrupt=should_interrupt)


def tiled_decode(decoder: nn.Module, z: Tensor, *, tile_size: int | None = None, upcast: bool = False,
                 offload: bool | None = None, progress: ProgressCallback | None = None,
                 should_interrupt: InterruptCheck | None = None) -> Tensor:
    """``decoder(z)`` computed tile by tile, exact up to float rounding.

    Args:
        decoder: an LDM ``Decoder`` (A1111 ``first_stage_model.decoder``, Forge
            ``IntegratedAutoencoderKL.decoder``); only called and read.
        z: ``(B, z_channels, h, w)`` latent *after* ``post_quant_conv``, as ``decoder.forward`` gets it.
        tile_size: core size in latent pixels; None picks it from free memory (``memory.py``).
        upcast: run the VAE math in fp32 (fp32 copies of the weights, per run) — the fallback for
            fp16 VAEs that overflow to NaN/inf. The result is then fp32.
        offload: park tiles on the CPU between passes; None decides from free accelerator memory
            (never on a CPU model).
        progress: called with (tile steps done, total) after every tile step.
        should_interrupt: polled before every tile step; True raises ``TiledVAEInterrupted``.

    Raises ``NonFiniteError`` (with the fp32 advice) when NaN/inf appear, ``UnsupportedVAE`` for a
    module tree without the LDM layout. The result is on ``z``'s device.
    """
    return _tiled(compile_decoder, decoder, z, tile_size, upcast, offload, progress, should_interrupt)


def tiled_encode(encoder: nn.Module, x: Tensor, *, tile_size: int | None = None, upcast: bool = False,
                 offload: bool | None = None, progress: ProgressCallback | None = None,
                 should_interrupt: InterruptCheck | None = None) -> Tensor:
    """``encoder(x)`` (the moments, before ``quant_conv``) computed tile by tile, exact up to rounding.

    ``x`` is the ``(B, 3, H, W)`` image in [-1, 1]; ``tile_size`` is in image pixels (cores are
    aligned to the encoder's 2**downsamples grid). Other arguments as :func:`tiled_decode`.
    """
    return _tiled(compile_encoder, encoder, x, tile_size, upcast, offload, progress, should_interrupt)
