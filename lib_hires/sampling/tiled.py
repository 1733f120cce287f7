"""Tiled evaluation of the model: a call hook that runs each batched model call window by window.

The host's batched call (cond and uncond rows of every image, in the host's layout) is cut into the
windows a method chooses for the step; `tile_batch` windows at a time are stacked along the batch
(window-major: all rows of window 0, then window 1, ...) with the call's rows repeated, so the host's
own conditioning, CFG and prompt machinery run unchanged; each window gets its own conditioning
(`ops.conditioning.window_cond`: spatial conditioning cropped, SDXL crop coordinates; a method may
add its own, e.g. AccDiffusion's patch prompts) and a ControlNet the hint of its own pixels
(`ops.control_hint.crop`, through the call's `pixels`). The denoised windows are blended back with weights
normalised per pixel, so a pixel covered by one window gets exactly that window's prediction.

Pixels no window covers (FSTD's top/left strip) take the previous step's stitched noise prediction,
in the k-diffusion form of methods/any-size-diffusion-fstd.md §4: `D = x - sigma * eps_prev` with
`eps_prev = (x_prev - D_prev) / sigma_prev` from the last call of the previous step (zero before any).

Memory: one batch of windows, the output and one weight map of the latent's size; nothing of the size
of windows x latent is allocated.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..ops import control_hint
from ..ops.conditioning import window_cond
from ..ops.windows import Window, blend_sum, window_weights
from ..patching import PatchScope
from .hooks import CallNext, ModelCall, PassHooks, Rows
from .steps import Step

WindowsFor = Callable[[Step, tuple[int, int]], Sequence[Window]]
"""The windows of a step for a latent of (height, width)."""
WindowCond = Callable[[Any, Sequence[Window], Rows, tuple[int, int]], Any]
"""Conditioning for a batch of windows from conditioning repeated once per window, given the rows of one
window (see `cropped`)."""


def cropped(cond: Any, windows: Sequence[Window], rows: Rows, latent: tuple[int, int]) -> Any:
    """The default `WindowCond`: `ops.conditioning.window_cond`."""
    return window_cond(cond, windows, len(rows.image), latent)


@dataclass
class _Previous:
    """The stitched noise prediction of the last call of the latest step, and of the step before it."""

    step: int
    eps: torch.Tensor
    before: torch.Tensor | None


class TiledEvaluation:
    """A call hook evaluating every model call on the windows `windows_for` gives for its step."""

    def __init__(self, windows_for: WindowsFor, weights: str, tile_batch: int,
                 condition: WindowCond = cropped) -> None:
        if tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
        self.windows_for = windows_for
        self.weights = weights
        self.tile_batch = tile_batch
        self.condition = condition
        self.previous: dict[tuple[Any, ...], _Previous] = {}  # per row layout of the host's calls
        self.evaluations = 0  # window evaluations so far (for tests and benchmarks)

    def __call__(self, call: ModelCall, call_next: CallNext) -> torch.Tensor:
        x = call.x
        rows, latent = x.shape[0], (x.shape[-2], x.shape[-1])
        windows = list(self.windows_for(call.step, latent))
        total = blend_sum(windows, *latent, self.weights)
        out = torch.zeros_like(x)
        for start in range(0, len(windows), self.tile_batch):
            batch = windows[start:start + self.tile_batch]
            repeated = call.subset(list(range(rows)) * len(batch))
            tiles = torch.cat([x[:, :, w.slices[0], w.slices[1]] for w in batch])
            hints = call.with_pixels(lambda hint, batch=batch: torch.cat([control_hint.crop(hint, w) for w in batch]))
            denoised = call_next(replace(repeated, x=tiles, cond=self.condition(repeated.cond, batch, call.rows, latent),
                                         pixels=hints.pixels))
            self.evaluations += len(batch)
            for k, window in enumerate(batch):
                share = (window_weights(window, self.weights) / total[window.slices]).to(x)
                out[:, :, window.slices[0], window.slices[1]] += denoised[k * rows:(k + 1) * rows] * share
        return self._fill_uncovered(call, out, total == 0)

    def _fill_uncovered(self, call: ModelCall, out: torch.Tensor, uncovered: torch.Tensor) -> torch.Tensor:
        x, sigma = call.x, call.sigma.reshape(-1, 1, 1, 1).to(call.x)
        key = (call.rows, tuple(x.shape))
        entry = self.previous.get(key)
        if entry is not None and entry.step < call.step.index:
            entry = self.previous[key] = _Previous(entry.step, entry.eps, entry.eps)
        if bool(uncovered.any()):
            eps = entry.before if entry is not None and entry.before is not None else torch.zeros_like(x)
            mask = uncovered.to(x.device)
            out = torch.where(mask, x - sigma * eps, out)
        if bool((sigma > 0).all()):
            eps_now = (x - out) / sigma
            before = entry.before if entry is not None else None
            self.previous[key] = _Previous(call.step.index, eps_now, before)
        return out


@dataclass(frozen=True)
class TiledPlan:
    """One pass evaluated on windows (a `methods.base.PassPlan`): nothing of the UNet is patched, every
    model call of the pass goes through a fresh `TiledEvaluation`."""

    windows_for: WindowsFor
    weights: str
    tile_batch: int

    def install(self, unet: torch.nn.Module, scope: PatchScope, warn: Callable[[str], None]) -> PassHooks:
        return PassHooks(call_hooks=(TiledEvaluation(self.windows_for, self.weights, self.tile_batch),))
