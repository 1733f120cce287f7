"""DemoFusion's step in an upscaling phase (Du et al., CVPR 2024, §3.3; methods/demofusion.md §3): every
model call is answered by two branches mixed by the cosine factor of its timestep,

    D = (1 - c2) D_local + c2 D_global,    c2 = cf(t)^alpha2   (`ops.skip_residual.cosine_factor`).

* Local branch: MultiDiffusion on jittered native-size windows of the latent zero-padded by the jitter
  range J (`ops.windows.jitter`), averaged with uniform weights (`sampling.tiled.TiledEvaluation`, which
  also gives each window its SDXL crop coordinates, in padded coordinates as the official code does).
  The windows and their conditioning come from the plan (DemoFusion: fresh jitter every step;
  AccDiffusion: fixed per phase, with per-window prompts); FSTD's shifted tiles may take their place.
* Global branch: dilated sampling (`ops.dilated_sampling`): the s^2 sub-lattices of the top/left padded
  latent, the UNet on the blurred lattices (sigma_b = sigma c3, c3 = 0.99 cf^alpha3 + 0.01), the step
  on the unblurred ones, optionally with AccDiffusion's window interaction.

Mixing in denoised space: the official code steps every view with Euler and averages the stepped
latents; Euler's step is affine in the denoised prediction with weights summing to one, so averaging
the predictions and stepping once is the same (and defines the branch for any sampler). A lattice's
prediction for its unblurred input is `x - (x_blurred - D_blurred)` (the noise predicted on the
blurred input, applied to the unblurred one); with window interaction the noise predictions are
permuted back first. The host's CFG is linear in the rows, so mixing rows before it equals mixing the
guided results; AccDiffusion's separate patch CFG rescales the local branch's guidance direction.

A ControlNet's hint follows every view (`ops.control_hint`): padded, cropped per window in the local
branch; padded, blurred like the latent and block-gathered per lattice in the global one, its blocks
permuted with the latent. A hint cannot follow the official element-wise window interaction (one
position's channels from different lattices), so while a ControlNet is attached the permutations are
drawn per position (the paper's form), and the job says so.

Memory: one batch of `view_batch` windows or lattices, plus a few tensors of the latent's size.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..ops import control_hint
from ..ops.dilated_sampling import (
    blurred_input,
    element_permutations,
    lattice_offsets,
    lattice_padding,
    permute,
    unpermute,
)
from ..ops.skip_residual import cosine_factor
from .guidance import guidance_rescaled
from .hooks import CallNext, ModelCall, Warn
from .tiled import TiledEvaluation

Timestep = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GlobalBranch:
    """Dilated sampling at `scale` (the phase number): blur base sigma and its decay exponent, views per
    UNet call, the UNet's latent multiple (sub-lattices are padded to it), window interaction ("off",
    "element" or "position") and the seed of its permutations."""

    scale: int
    sigma: float
    blur_decay: float
    view_batch: int
    multiple: int
    interaction: str = "off"
    seed: int = 0


def step_seed(seed: int, stage: int, step: int) -> int:
    """One seed per (job seed, stage, step) for a method's per-step randomness."""
    return (seed * 1_000_003 + stage * 10_007 + step) % 2**63


class LocalGlobal:
    """The call hook of one upscaling phase (see the module docstring)."""

    def __init__(self, local: TiledEvaluation, pad: int, branch: GlobalBranch, mix_decay: float,
                 timestep: Timestep, stage: int, local_cfg_ratio: float = 1.0,
                 warn: Warn = lambda message: None) -> None:
        self.local = local
        self.pad = pad
        self.branch = branch
        self.mix_decay = mix_decay
        self.timestep = timestep
        self.stage = stage
        self.local_cfg_ratio = local_cfg_ratio
        self.warn = warn
        self.warned = False
        self.lattice_evaluations = 0  # sub-lattice evaluations so far (tests, benchmarks)

    def __call__(self, call: ModelCall, call_next: CallNext) -> torch.Tensor:
        cf = cosine_factor(float(self.timestep(call.sigma.reshape(-1)[:1])[0]))
        c2 = cf ** self.mix_decay
        local = guidance_rescaled(self._local(call, call_next), call.rows, self.local_cfg_ratio)
        blur = self.branch.sigma * (0.99 * cf ** self.branch.blur_decay + 0.01)
        return (1 - c2) * local + c2 * self._global(call, call_next, blur)

    def _local(self, call: ModelCall, call_next: CallNext) -> torch.Tensor:
        j = self.pad
        if j == 0:
            return self.local(call, call_next)
        h, w = call.x.shape[-2:]
        padded = call.with_pixels(lambda hint: control_hint.pad(hint, j, j, j, j), x=F.pad(call.x, (j, j, j, j)))
        return self.local(padded, call_next)[..., j:j + h, j:j + w]

    def _per_position(self, call: ModelCall) -> bool:
        """Whether this call's permutations are drawn per position (always for "position"; for "element"
        while a ControlNet is attached, said once)."""
        if self.branch.interaction == "position":
            return True
        if call.controlled and not self.warned:
            self.warned = True
            self.warn("AccDiffusion: window interaction drawn per position, not per element, while a ControlNet "
                      "is attached (its hint can follow positions, not channels)")
        return call.controlled

    def _global(self, call: ModelCall, call_next: CallNext, blur_sigma: float) -> torch.Tensor:
        branch, x = self.branch, call.x
        s, rows = branch.scale, x.shape[0]
        top, left = lattice_padding(x.shape[-2], x.shape[-1], s, branch.multiple)
        padded = F.pad(x, (left, 0, top, 0))
        blurred = blurred_input(padded, s, blur_sigma)
        hints = call.with_pixels(lambda hint: control_hint.blur(control_hint.pad(hint, top, 0, left, 0),
                                                                2 * s - 1, blur_sigma))
        out = torch.empty_like(padded)
        images = sorted(set(call.rows.image))
        image_of_row = [images.index(i) for i in call.rows.image]
        generator = torch.Generator().manual_seed(step_seed(branch.seed, self.stage, call.step.index))
        offsets = lattice_offsets(s)
        for first in range(0, len(offsets), branch.view_batch):
            batch: Sequence[tuple[int, int]] = offsets[first:first + branch.view_batch]
            inputs = torch.stack([blurred[:, :, a::s, b::s] for a, b in batch])  # (V, rows, C, h, w)
            order = None
            if branch.interaction != "off" and len(batch) > 1:
                shape = (len(images), *inputs.shape[2:])
                drawn = element_permutations(len(batch), shape, generator, self._per_position(call))
                order = drawn[:, image_of_row].to(inputs.device)
                inputs = permute(inputs, order)
            repeated = call.subset(list(range(rows)) * len(batch))
            views = hints.with_pixels(lambda hint, batch=batch, order=order: _lattice_hints(hint, s, batch, order))
            denoised = call_next(replace(repeated, x=inputs.flatten(0, 1), pixels=views.pixels)).reshape(inputs.shape)
            self.lattice_evaluations += len(batch)
            shift = inputs - denoised  # sigma * eps of each composite
            if order is not None:
                shift = unpermute(shift, order)
            for k, (a, b) in enumerate(batch):
                out[:, :, a::s, b::s] = padded[:, :, a::s, b::s] - shift[k]
        return out[..., top:, left:]


def _lattice_hints(hint: torch.Tensor, scale: int, lattices: Sequence[tuple[int, int]],
                   order: torch.Tensor | None) -> torch.Tensor:
    """The hints of a batch of sub-lattices (lattice-major rows), their blocks permuted like the latent."""
    views = torch.stack([control_hint.lattice(hint, scale, a, b) for a, b in lattices])
    if order is not None:
        views = control_hint.permute_blocks(views, order)
    return views.flatten(0, 1)
