"""Conditioning for one window of a latent: spatial conditioning cropped with it, SDXL's crop
coordinates set to its top-left (pure functions over the hosts' nested conditioning objects).

SDXL's vector conditioning (A1111 key `vector`, Forge key `y`, the UNet's `y`) is the concatenation
of the pooled text embedding (1280) and sinusoidal embeddings of `original_size`, `crop_coords_top_left`
and `target_size` (SDXL base; the refiner has an aesthetic score instead of the target size), each
number embedded with 256 channels (SGM's `ConcatTimestepEmbedderND` over `timestep_embedding`). The
crop coordinates occupy channels 1792-2303 in both. DemoFusion and AccDiffusion give every window the
crop of its top-left in image pixels (methods/demofusion.md §3.1), which `with_crop` does.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .windows import Window

EMBED = 256  # channels per embedded number
ORIGINAL_SLICE = slice(1280, 1280 + 2 * EMBED)  # after the pooled text
CROP_SLICE = slice(1280 + 2 * EMBED, 1280 + 4 * EMBED)  # after original_size
TARGET_SLICE = slice(1280 + 4 * EMBED, 1280 + 6 * EMBED)  # SDXL base only
VECTOR_WIDTHS = (2816, 2560)  # SDXL base, SDXL refiner
VECTOR_KEYS = ("vector", "y")  # A1111, Forge


def embed_numbers(values: Sequence[float], dim: int = EMBED, max_period: float = 10000.0) -> torch.Tensor:
    """Each number's sinusoidal embedding `[cos(v f), sin(v f)]`, `f_k = max_period^(-k / (dim/2))`,
    concatenated: shape (len(values) * dim,), float32 (LDM/SGM `timestep_embedding`)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.tensor(values, dtype=torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).reshape(-1)


def with_crop(vector: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """A copy of SDXL vector conditioning rows with `crop_coords_top_left` = (top, left) image pixels."""
    out = vector.clone()
    out[:, CROP_SLICE] = embed_numbers([top, left]).to(out)
    return out


def map_tensors(cond: Any, fn: Callable[[torch.Tensor, object], torch.Tensor]) -> Any:
    """`cond` (a host's nest of dicts, lists and tuples) with every tensor replaced by `fn(tensor, key)`,
    `key` the dict key it sits under (None at the top)."""
    def walk(obj: Any, key: object = None) -> Any:
        if isinstance(obj, torch.Tensor):
            return fn(obj, key)
        if isinstance(obj, dict):
            return {k: walk(v, k) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(walk(v, key) for v in obj)
        return obj

    return walk(cond)


def is_vector(tensor: torch.Tensor, key: object, widths: Sequence[int] = VECTOR_WIDTHS) -> bool:
    """Whether a conditioning tensor is an SDXL vector (under `vector` or `y`, one of `widths` wide)."""
    return key in VECTOR_KEYS and tensor.dim() == 2 and tensor.shape[-1] in widths


def with_sizes(cond: Any, height: int, width: int) -> Any:
    """SDXL base conditioning with `original_size` and `target_size` both (height, width) pixels (the size
    conditioning AP-LDM gives each stage); crop coordinates and everything else kept. Conditioning
    without an SDXL base vector is returned as it is."""
    def sized(tensor: torch.Tensor, key: object) -> torch.Tensor:
        if not is_vector(tensor, key, VECTOR_WIDTHS[:1]):
            return tensor
        out = tensor.clone()
        sizes = embed_numbers([height, width]).to(out)
        out[:, ORIGINAL_SLICE] = sizes
        out[:, TARGET_SLICE] = sizes
        return out

    return map_tensors(cond, sized)


def window_cond(cond: Any, windows: Sequence[Window], rows: int, latent: tuple[int, int], vae_scale: int = 8) -> Any:
    """Conditioning for a batch of windows, from conditioning whose rows are already repeated once per
    window (window-major: rows `k * rows ... (k + 1) * rows - 1` are window k's).

    In the nest of dicts, lists and tuples: a 4-d tensor with the latent's height and width (e.g. an
    inpainting model's image conditioning) is cropped to each window; an SDXL vector (under `vector`
    or `y`) gets each window's top-left as its crop coordinates; everything else is kept.
    """
    height, width = latent

    def per_window(tensor: torch.Tensor, key: object) -> torch.Tensor:
        spatial = tensor.dim() == 4 and tuple(tensor.shape[-2:]) == (height, width)
        if spatial and tensor.shape[0] == rows * len(windows):
            return torch.cat([tensor[k * rows:(k + 1) * rows, :, w.slices[0], w.slices[1]]
                              for k, w in enumerate(windows)])
        if is_vector(tensor, key):
            return torch.cat([with_crop(tensor[k * rows:(k + 1) * rows], w.top * vae_scale, w.left * vae_scale)
                              for k, w in enumerate(windows)])
        return tensor

    return map_tensors(cond, per_window)


CONTEXT_KEYS = ("c_crossattn", "crossattn", None)  # A1111 SD1 (in a list) and Forge, A1111 SDXL, a bare tensor
POOLED = slice(0, 1280)  # the pooled text embedding at the start of an SDXL vector


@dataclass(frozen=True)
class PromptCond:
    """One row's text conditioning: the cross-attention context (1, L, D) and, for SDXL, the pooled text
    embedding (1, 1280)."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None


def with_prompts(cond: Any, prompts: Mapping[int, PromptCond], rows: int) -> Any:
    """`cond` (a host's conditioning of `rows` rows) with the text conditioning of the rows in `prompts`
    replaced: their cross-attention context rows and, in an SDXL vector, their pooled embedding.
    A replacement context must have the row's length (hosts keep the prompt's chunk count); a context
    one token longer keeps its first token (sd-webui-controlnet marks each row cond or uncond there)."""
    if not prompts:
        return cond
    index = sorted(prompts)

    def replaced(tensor: torch.Tensor, key: object) -> torch.Tensor:
        if tensor.dim() == 3 and tensor.shape[0] == rows and key in CONTEXT_KEYS:
            out = tensor.clone()
            for i in index:
                context = prompts[i].context
                marked = tensor.shape[1] == context.shape[1] + 1 and context.shape[2:] == tensor.shape[2:]
                if context.shape[1:] != tensor.shape[1:] and not marked:
                    raise ValueError(f"a patch prompt's context {tuple(context.shape[1:])} does not match the "
                                     f"prompt's {tuple(tensor.shape[1:])}")
                out[i, int(marked):] = context[0].to(out)
            return out
        if tensor.shape[0] == rows and is_vector(tensor, key):
            out = tensor.clone()
            for i in index:
                pooled = prompts[i].pooled
                if pooled is not None:
                    out[i, POOLED] = pooled[0].to(out)
            return out
        return tensor

    return map_tensors(cond, replaced)
