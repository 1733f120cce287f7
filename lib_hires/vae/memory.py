"""Automatic tile size and parking decision from free memory (tiled_vae.md §1.3 "default tile size
by VRAM", §4.1-4.2; issue 4 "tile size chosen automatically from free memory").

A tile's working set is estimated from the compiled network: the widest conv's input + output
activations at its resolution (``Program.peak_elements_per_pixel`` per input pixel) times 1.5 for
the normalised copy and the shortcut that coexist with them. On CUDA a tile may use half of the free
memory (``torch.cuda.mem_get_info`` plus what PyTorch's allocator holds unused); on the CPU, where the
parked activations share the RAM with the tile, an eighth of the available RAM, at most 1 GiB.
"""
from __future__ import annotations

import math
import os

import torch

from .grid import HALO
from .network import Program

CPU_TILE_BUDGET = 1 << 30
"""Largest working set of one tile on the CPU, in bytes (such tiles already run within ~10% of the
untiled time at SD widths, docs/benchmarks.md; larger ones would only add to the peak RSS)."""

UNKNOWN_DEVICE_BUDGET = 1 << 30
"""Working set of one tile on an accelerator whose free memory PyTorch cannot report."""

MIN_TILE_LATENT = 16
"""Smallest automatic tile, in latent pixels: below it the halos cost more than they save."""


def available_ram() -> int | None:
    """Bytes of RAM available to new allocations (Linux ``MemAvailable``, else free pages), or None
    where the platform does not tell (e.g. Windows)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def free_accelerator_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device, counting blocks PyTorch's cache holds unused; None if unknown."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def tile_budget(device: torch.device) -> int:
    """Bytes one tile's working set may take on ``device``."""
    if device.type == "cpu":
        ram = available_ram()
        return CPU_TILE_BUDGET if ram is None else min(CPU_TILE_BUDGET, ram // 8)
    free = free_accelerator_memory(device)
    return UNKNOWN_DEVICE_BUDGET if free is None else free // 2


def auto_tile_size(program: Program, device: torch.device, element_size: int) -> int:
    """The largest square tile within the budget, in input pixels, a multiple of 8 and of the
    program's alignment, at least ``MIN_TILE_LATENT`` latent pixels."""
    bytes_per_pixel = program.peak_elements_per_pixel * element_size * 1.5
    window = math.isqrt(int(tile_budget(device) / bytes_per_pixel))
    step = max(8, program.align)
    return max(MIN_TILE_LATENT * program.align, (window - 2 * HALO) // step * step)


def should_offload(program: Program, device: torch.device, element_size: int, pixels: int) -> bool:
    """Park tiles on the CPU unless the model runs there or its activations fit in half the free memory.

    The parked activations are estimated as two layers of the widest stage over the whole input
    (``peak_elements_per_pixel``).
    """
    if device.type == "cpu":
        return False
    free = free_accelerator_memory(device)
    parked = program.peak_elements_per_pixel * pixels * element_size
    return free is None or parked > free // 2
