"""Cascades inside a WebUI job (A1111 and Forge): the `Host` protocol for the stages that replace one
pass, and the two ways in (methods/base.py `CascadePlan`).

* Direct entry: the first pass's `p.sampler.sample` is replaced for that pass; the whole cascade runs
  from noise inside it and returns the target-size latent, which the WebUI decodes as usual.
* Hires-fix entry: the first pass samples as usual (with the method's hooks); its latent is kept, and
  the hires pass's `p.sampler.sample_img2img` is replaced: the cascade continues from that latent and
  the WebUI decodes the result. The WebUI's hires upscale still runs before (its result is unused).

Every stage is sampled by the pass's own sampler through its own `sample_img2img` (so the user's
sampler, scheduler, CFG, prompts, LoRA, image conditioning, live preview and interrupt behave as in any
img2img pass), with three instance-level patches for the duration of the stage: `get_sigmas` returns
the stage's schedule tail, `p.denoising_strength` is 1 so that the WebUI runs all of it, and
`sampler.func` is the hooked sampler (step hooks, the adapter's model-call wrapper, progress). The
latent arrives already noised, so the WebUI's own noise is zero. Progress: one bar over the stages
(`state.sampling_step` counts from the stages before, `state.sampling_steps` is the cascade's total).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from ..job import NATIVE_SIZE
from ..methods.base import CascadePlan
from ..ops.conditioning import PromptCond
from ..patching import PatchScope
from ..sampling.driver import run_stages
from ..sampling.hooks import PassHooks, PassSlot, hooked_sampler
from ..sampling.steps import sigma_to_timestep
from ..unet import ModelFamily, map_unet
from . import prompts

SEED_STREAM = 100003  # noise stream k > 0 uses seeds + k * SEED_STREAM (stream 0: the image seeds)


MARK = "_hires_methods_cascade"  # on our replacements: Forge runs the pass hook twice, the second is a no-op


class Adapter(Protocol):
    """What differs between A1111 and Forge (`hosts.a1111`, `hosts.forge`)."""

    def unet_of(self, sd_model: Any) -> nn.Module: ...

    def native_size(self, sd_model: Any) -> int | None: ...

    def model_calls(self, p: Any, sampler: Any, slot: PassSlot, scope: PatchScope) -> Callable[[Any], Any]:
        """Route the pass's model calls through `slot` until `scope` exits; returns the wrapper for the
        denoiser the sampler function gets."""

    def encode(self, p: Any, image: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Image in [-1, 1] -> latent: posterior mean, or mean + std * noise."""


def is_k_diffusion(sampler: Any) -> bool:
    """Cascades run on k-diffusion samplers (sigma schedules); DDIM, PLMS and UniPC are timestep samplers."""
    return callable(getattr(sampler, "get_sigmas", None))


class WebUIStages:
    """The `Host` of a cascade inside one WebUI pass: `p`, its sampler and its conditioning."""

    def __init__(self, p: Any, sampler: Any, cond: Any, uncond: Any, adapter: Adapter,
                 sample_img2img: Callable[..., torch.Tensor]) -> None:
        from modules import shared

        self.p, self.sampler, self.cond, self.uncond = p, sampler, cond, uncond
        self.adapter = adapter
        self.state = shared.state
        self.slot = PassSlot()
        self._sample_img2img = sample_img2img
        self._func = sampler.func
        self._get_sigmas = sampler.get_sigmas
        self._steps: list[int] = []

    @property
    def unet(self) -> nn.Module:
        return self.adapter.unet_of(self.p.sd_model)

    @property
    def family(self) -> ModelFamily:
        return map_unet(self.unet).family

    @property
    def native_size(self) -> int:
        return self.adapter.native_size(self.p.sd_model) or NATIVE_SIZE[self.family.value]

    @property
    def batch_size(self) -> int:
        return len(self.p.seeds)

    def sigmas(self, steps: int) -> torch.Tensor:
        return self._get_sigmas(self.p, steps)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """From the training sigmas of the sampler's model wrapper (A1111's `CompVisDenoiser`, Forge's
        schedule linker; increasing in both)."""
        return sigma_to_timestep(sigma, self.sampler.model_wrap.sigmas)

    def noise(self, shape: Sequence[int], stage: int) -> torch.Tensor:
        """The WebUI's seeded noise (seeds, variation seeds and strength, resize-seed) at `shape`."""
        from modules import rng

        p = self.p

        def shifted(seeds: Sequence[int]) -> list[int]:
            return [(int(s) + stage * SEED_STREAM) % 2**32 for s in seeds]

        return rng.ImageRNG(tuple(shape[1:]), shifted(p.seeds), subseeds=shifted(p.subseeds),
                            subseed_strength=p.subseed_strength, seed_resize_from_h=p.seed_resize_from_h,
                            seed_resize_from_w=p.seed_resize_from_w).next()

    def _prompt(self, image: int) -> str | None:
        """The image's prompt in this pass, as in effect at its last step (None: it has AND)."""
        p = self.p
        hires = getattr(p, "is_hr_pass", False) and getattr(p, "hr_prompts", None)
        return prompts.final_prompt((p.hr_prompts if hires else p.prompts)[image], p.steps)

    def prompt_tokens(self, image: int) -> list[tuple[int, str]]:
        text = self._prompt(image)
        return [] if text is None else prompts.prompt_tokens(self.p.sd_model, text)

    def patch_prompt(self, image: int, positions: Sequence[int], mode: str) -> PromptCond:
        return prompts.patch_prompt(self.p.sd_model, self._prompt(image) or "", positions, mode)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        from modules.sd_samplers_common import decode_first_stage

        return decode_first_stage(self.p.sd_model, latent).float()

    def encode(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.adapter.encode(self.p, image, noise)

    def interrupted(self) -> bool:
        return bool(self.state.interrupted or self.state.skipped)

    def progress(self, done: int, total: int) -> None:
        self.state.textinfo = f"{done}/{total}"

    def begin_stages(self, steps: Sequence[int]) -> None:
        self._steps = list(steps)

    def sample(self, x: torch.Tensor, sigmas: torch.Tensor, hooks: PassHooks, stage: int) -> torch.Tensor:
        offset, total = sum(self._steps[:stage]), sum(self._steps)
        state, p, sampler = self.state, self.p, self.sampler
        with PatchScope() as scope:
            wrap_model = self.adapter.model_calls(p, sampler, self.slot, scope)
            hooked = hooked_sampler(self._func, hooks, self.slot)

            @functools.wraps(self._func)  # keeps the signature the WebUI inspects
            def func(model: Any, latent: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
                state.sampling_steps, state.sampling_step = total, offset
                callback = kwargs.get("callback")
                if callback is not None:
                    def counted(d: dict[str, Any]) -> None:
                        callback(d)
                        state.sampling_step = offset + d["i"]
                    kwargs["callback"] = counted
                return hooked(wrap_model(model), latent, *args, **kwargs)

            scope.set_attr(sampler, "func", func)
            scope.set_attr(sampler, "get_sigmas", lambda _p, _steps: sigmas)
            scope.set_attr(p, "denoising_strength", 1.0)
            return self._sample_img2img(p, x, torch.zeros_like(x), self.cond, self.uncond, steps=len(sigmas) - 1,
                                        image_conditioning=p.txt2img_image_conditioning(x))


def _replace(sampler: Any, name: str, function: Callable[..., torch.Tensor]) -> None:
    """Set `sampler.<name>` (an instance attribute, gone with the sampler after the pass), unless ours
    is there already."""
    if not getattr(getattr(sampler, name), MARK, False):
        setattr(function, MARK, True)
        setattr(sampler, name, function)


def replace_first_pass(p: Any, cascade: CascadePlan, adapter: Adapter, warn: Callable[[str], None]) -> None:
    """Direct entry: this pass's `sampler.sample` runs the whole cascade from noise."""
    sampler = p.sampler

    def sample(_p: Any, x: torch.Tensor, cond: Any, uncond: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        host = WebUIStages(p, sampler, cond, uncond, adapter, sampler.sample_img2img)
        return run_stages(host, cascade.stages, None, warn)

    _replace(sampler, "sample", sample)


def keep_first_latent(p: Any, keep: Callable[[torch.Tensor], None]) -> None:
    """Hires-fix entry, first pass: hand the first pass's latent to `keep` (its own sampling unchanged)."""
    original = p.sampler.sample

    def sample(*args: Any, **kwargs: Any) -> torch.Tensor:
        latent = original(*args, **kwargs)
        keep(latent)
        return latent

    _replace(p.sampler, "sample", sample)


def replace_hires_pass(p: Any, cascade: CascadePlan, first_latent: torch.Tensor, adapter: Adapter,
                       warn: Callable[[str], None]) -> None:
    """Hires-fix entry: this pass's `sampler.sample_img2img` continues the cascade from the first pass's
    latent (the WebUI's upscaled latent it is given is not used)."""
    sampler = p.sampler
    original = sampler.sample_img2img

    def sample_img2img(_p: Any, x: torch.Tensor, noise: torch.Tensor, cond: Any, uncond: Any, *args: Any,
                       **kwargs: Any) -> torch.Tensor:
        host = WebUIStages(p, sampler, cond, uncond, adapter, original)
        return run_stages(host, cascade.stages, first_latent.to(x), warn)

    _replace(sampler, "sample_img2img", sample_img2img)
