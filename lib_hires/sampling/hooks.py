"""Step hooks and call hooks for one sampling pass of the host's own sampler.

Two levels of the host's model stack are hooked (DESIGN.md, "Sampling"):

* The *denoiser* the sampler function receives, `model(x, sigma, **extra_args)`: one row per image,
  CFG inside. k-diffusion samplers call it on their own state tensor at the start of every step, so a
  step hook that changes `x` in place there changes the sampler's state before the step is taken
  (Euler, Euler a, DPM++ 2M and 2M SDE use that same `x` for their update; second-order samplers'
  intermediate evaluations belong to the same step and run no step hook). Step hooks run once more
  on the sampler's result, with `Step(count, count)`.
* The batched *model call* below the host's CFG: cond and uncond rows together, returning the
  denoised prediction per row. Call hooks wrap it, outermost first; each gets the call and the rest
  of the chain (`call_next`). `Rows` says which image each row belongs to and whether it is an
  unconditional row, so hooks never assume the host's batch layout.
* Pixel-space conditioning (a ControlNet's hint) must follow what a hook does to the latent's
  geometry: a hook that calls on with tiles, padded or sub-sampled latents or other rows says, in the
  call's `pixels`, how the hint of the pass's whole latent becomes the hint of the new rows
  (`ops.control_hint`); the host applies it where it runs the ControlNet, at the end of the chain.

`hooked_sampler` wraps a k-diffusion-style sampler function so that each run is one `SamplingPass`,
published in a `PassSlot` for the host's model-call wrapper to find.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .steps import Step, locate_step

if TYPE_CHECKING:
    from torch import nn

    from ..patching import PatchScope

StepHook = Callable[[torch.Tensor, Step], None]  # changes the sampler's latent in place
PixelMap = Callable[[torch.Tensor], torch.Tensor]
"""Hint pixels of the pass's own call, one row per row of it `(rows, C, 8H, 8W)` -> hint pixels of a
call's rows and inputs `(rows', C, 8h, 8w)`."""
Warn = Callable[[str], None]  # tells the user something (the infotext's warning, the log)


@dataclass(frozen=True)
class Rows:
    """Per row of a batched model call: the image it belongs to and whether it is unconditional."""

    image: tuple[int, ...]
    uncond: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.image) != len(self.uncond):
            raise ValueError("Rows.image and Rows.uncond must have one entry per row")

    def where(self, *, uncond: bool) -> list[int]:
        """Indices of the unconditional (or conditional) rows."""
        return [i for i, u in enumerate(self.uncond) if u == uncond]

    def uncond_of(self) -> dict[int, int]:
        """Each image's unconditional row (images without one are absent)."""
        return {image: i for i, (image, unc) in enumerate(zip(self.image, self.uncond)) if unc}

    def take(self, indices: Sequence[int]) -> Rows:
        return Rows(tuple(self.image[i] for i in indices), tuple(self.uncond[i] for i in indices))


@dataclass(frozen=True)
class ModelCall:
    """One batched model call: input rows, their noise levels and conditioning, and the current step.

    `cond` is the host's own conditioning object; `take_cond(cond, indices)` selects rows of it (the
    host provides it), so a hook can evaluate a subset of the rows with `subset`.

    `pixels` maps the hint of the pass's call to this call's (None: this call *is* the pass's call, the
    hint applies as it is); a hook that changes the rows or the geometry of `x` sets it (`subset`,
    `with_pixels`). `controlled` says that the host has a ControlNet attached, so that a hook can avoid
    a geometry no hint can follow.
    """

    x: torch.Tensor
    sigma: torch.Tensor
    cond: Any
    rows: Rows
    step: Step
    take_cond: Callable[[Any, Sequence[int]], Any]
    pixels: PixelMap | None = None
    controlled: bool = False

    def pixel_map(self) -> PixelMap:
        """`pixels`, or the identity for the pass's own call."""
        return self.pixels if self.pixels is not None else _same_pixels

    def with_pixels(self, fn: Callable[[torch.Tensor], torch.Tensor], **changes: Any) -> ModelCall:
        """This call with `changes` and `pixels` followed by `fn` (this call's hint -> the new call's)."""
        parent = self.pixel_map()
        return replace(self, pixels=lambda hint: fn(parent(hint)), **changes)

    def subset(self, indices: Sequence[int]) -> ModelCall:
        index = torch.as_tensor(list(indices), device=self.x.device, dtype=torch.long)
        rows = list(indices)
        return self.with_pixels(lambda hint: hint[rows], x=self.x.index_select(0, index),
                                sigma=self.sigma.index_select(0, index),
                                cond=self.take_cond(self.cond, indices), rows=self.rows.take(indices))


def _same_pixels(hint: torch.Tensor) -> torch.Tensor:
    return hint


CallNext = Callable[[ModelCall], torch.Tensor]
CallHook = Callable[[ModelCall, CallNext], torch.Tensor]


@dataclass(frozen=True)
class PassHooks:
    """What a method runs in one sampling pass."""

    step_hooks: tuple[StepHook, ...] = ()
    call_hooks: tuple[CallHook, ...] = ()


class PassPlan(Protocol):
    """One planned sampling pass (or cascade stage) of a method."""

    def install(self, unet: nn.Module, scope: PatchScope, warn: Warn) -> PassHooks:
        """Patch `unet` for this pass (undone when `scope` exits); the hooks to sample it with."""


@dataclass(frozen=True)
class FixedHooks:
    """A `PassPlan` that patches nothing and samples with the same hooks every time."""

    hooks: PassHooks = PassHooks()

    def install(self, unet: nn.Module, scope: PatchScope, warn: Warn) -> PassHooks:
        return self.hooks


class SamplingPass:
    """One run of the sampler over `schedule` (decreasing), with hooks and the current step."""

    def __init__(self, schedule: torch.Tensor, hooks: PassHooks) -> None:
        self.schedule = schedule.detach().to("cpu", torch.float64)
        self.hooks = hooks
        self.step: Step | None = None

    @property
    def count(self) -> int:
        return self.schedule.numel() - 1

    def enter(self, x: torch.Tensor, value: float) -> Step:
        """Called by the denoiser wrapper for every evaluation: sets the current step, and runs the step
        hooks on the sampler's `x` (in place) at the first evaluation of a new step (so a hook acting
        "after step i" acts at the start of step i + 1; see `finish` for the last one)."""
        step = Step(locate_step(self.schedule, value), self.count)
        if self.step is None or step.index > self.step.index:
            for hook in self.hooks.step_hooks:
                hook(x, step)
        self.step = step
        return step

    def finish(self, x: torch.Tensor) -> None:
        """Runs the step hooks once more on the sampler's result, with `Step(count, count)`."""
        for hook in self.hooks.step_hooks:
            hook(x, Step(self.count, self.count))

    def call(self, call: ModelCall, base: CallNext) -> torch.Tensor:
        """Run a batched model call through the call hooks, ending in the host's own call `base`."""
        hooks = self.hooks.call_hooks

        def run(index: int, current: ModelCall) -> torch.Tensor:
            if index == len(hooks):
                return base(current)
            return hooks[index](current, lambda nxt: run(index + 1, nxt))

        return run(0, call)

    def denoiser(self, model: Callable[..., torch.Tensor]) -> HookedDenoiser:
        return HookedDenoiser(model, self)


class HookedDenoiser:
    """The sampler's `model` argument, tracking steps and running step hooks; other attributes are the
    wrapped denoiser's (some samplers read e.g. `model.inner_model`)."""

    def __init__(self, model: Callable[..., torch.Tensor], sampling_pass: SamplingPass) -> None:
        self._model = model
        self._pass = sampling_pass

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        value = float(sigma.reshape(-1)[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
        self._pass.enter(x, value)
        return self._model(x, sigma, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class PassSlot:
    """Where the pass currently sampling is published for the host's model-call wrapper (one per host
    adapter or job). Outside a pass `current` is None and model calls run unhooked."""

    def __init__(self) -> None:
        self.current: SamplingPass | None = None

    @contextlib.contextmanager
    def holding(self, sampling_pass: SamplingPass) -> Iterator[SamplingPass]:
        previous, self.current = self.current, sampling_pass
        try:
            yield sampling_pass
        finally:
            self.current = previous


SamplerFn = Callable[..., torch.Tensor]


def hooked_sampler(sampler: SamplerFn, hooks: PassHooks, slot: PassSlot, schedule_arg: str = "sigmas") -> SamplerFn:
    """Wrap a k-diffusion-style sampler `sampler(model, x, sigmas, ...)` so that every run is a
    `SamplingPass` with `hooks`, published in `slot`.

    The schedule is the `schedule_arg` keyword or the third positional argument: `sigmas`, or
    `timesteps` for the WebUI's timestep samplers (DDIM, PLMS, UniPC), whose model gets timesteps;
    either is put in decreasing order. The wrapper keeps `sampler`'s signature (`functools.wraps`), since
    the WebUIs choose the keyword arguments they pass by inspecting it.
    """

    @functools.wraps(sampler)
    def run(model: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        schedule = torch.as_tensor(kwargs[schedule_arg] if schedule_arg in kwargs else args[0]).flatten()
        sampling_pass = SamplingPass(schedule.sort(descending=True).values, hooks)
        with slot.holding(sampling_pass):
            result = sampler(sampling_pass.denoiser(model), x, *args, **kwargs)
            sampling_pass.finish(result)
            return result

    return run


def take_rows(obj: Any, indices: Sequence[int], rows: int) -> Any:
    """Rows `indices` of every tensor with `rows` leading entries inside a nest of dicts, lists and
    tuples (a host's conditioning); everything else is returned as it is."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() > 0 and obj.shape[0] == rows:
            return obj[torch.as_tensor(list(indices), dtype=torch.long, device=obj.device)]
        return obj
    if isinstance(obj, dict):
        return {key: take_rows(value, indices, rows) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(take_rows(value, indices, rows) for value in obj)
    return obj
