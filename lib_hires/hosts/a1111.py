"""AUTOMATIC1111 WebUI 1.10 adapter: the model, and one hooked sampling pass.

* UNet: `p.sd_model.model.diffusion_model` (the LDM `UNetModel`).
* Model calls: A1111's CFG denoiser calls its inner k-diffusion wrapper (`CompVisDenoiser`, or the
  timestep wrapper for DDIM/PLMS/UniPC) with all cond rows (each image repeated once per AND
  sub-prompt) followed by one uncond row per image, in one call or in consecutive chunks
  (`batch_cond_uncond` off, prompts of different lengths, skipped uncond). `CfgLayout` learns the
  layout from each denoiser call's conditioning and hands out the rows of each chunk in order.
* The UNet is patched inside the sampler run only (`hosts.sampler.wrap_pass_sampler`); the tiled VAE
  for the whole job (decoder/encoder forwards of `p.sd_model.first_stage_model`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..job import JobPlan
from ..patching import PatchScope
from ..sampling.hooks import ModelCall, PassSlot, Rows, take_rows
from ..ui import UiModel
from ..vae.hook import VaeTiling
from .sampler import wrap_pass_sampler


def unet_of(sd_model: Any) -> nn.Module:
    return sd_model.model.diffusion_model


def ui_model() -> UiModel:
    """The loaded model, for the accordion's plan (read without triggering a load)."""
    from modules import sd_models

    model = sd_models.model_data.sd_model
    identity = getattr(getattr(model, "sd_checkpoint_info", None), "title", "")
    try:
        return UiModel(unet_of(model), native_size(model), None, identity)
    except AttributeError:  # still loading
        return UiModel(None, None, None, identity)


def native_size(sd_model: Any) -> int | None:
    """1024 for SDXL, 768 for SD2 v-prediction models; None lets the family decide (512)."""
    if getattr(sd_model, "is_sdxl", False):
        return 1024
    if getattr(sd_model, "is_sd2", False) and getattr(sd_model, "parameterization", "eps") == "v":
        return 768
    return None


class CfgLayout:
    """Rows of the model calls made by one evaluation of A1111's CFG denoiser."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, bool]] = []
        self.offset = 0

    def start(self, cond: Any, batch: int) -> None:
        repeats = [len(sub) for sub in cond.batch] if hasattr(cond, "batch") else [1] * batch
        self.rows = [(image, False) for image, n in enumerate(repeats) for _ in range(n)]
        self.rows += [(image, True) for image in range(batch)]
        self.offset = 0

    def take(self, count: int) -> Rows:
        rows = self.rows[self.offset:self.offset + count]
        self.offset += count
        if len(rows) != count:  # a layout we do not know (e.g. instruct-pix2pix): no row counts as uncond
            return Rows(tuple(i % max(count, 1) for i in range(count)), (False,) * count)
        return Rows(tuple(image for image, _ in rows), tuple(uncond for _, uncond in rows))


class _TrackLayout:
    """The CFG denoiser, noting each evaluation's layout before running it."""

    def __init__(self, model: Any, layout: CfgLayout) -> None:
        self._model = model
        self._layout = layout

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self._layout.start(kwargs.get("cond"), x.shape[0])
        return self._model(x, sigma, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def model_calls(p: Any, sampler: Any, slot: PassSlot, scope: PatchScope) -> Callable[[Any], Any]:
    """Route the sampler's batched model calls through `slot` until `scope` exits (the inner model's
    forward is wrapped); returns the wrapper for the CFG denoiser, which learns each call's layout."""
    layout = CfgLayout()

    def model_call(original: Callable[..., torch.Tensor], x: torch.Tensor, sigma: torch.Tensor,
                   **kwargs: Any) -> torch.Tensor:
        current = slot.current
        if current is None or current.step is None:
            return original(x, sigma, **kwargs)
        rows = x.shape[0]
        call = ModelCall(x, sigma, kwargs.get("cond"), layout.take(rows), current.step,
                         take_cond=lambda cond, idx: take_rows(cond, idx, rows))
        return current.call(call, lambda c: original(c.x, c.sigma, **{**kwargs, "cond": c.cond}))

    scope.wrap_forward(sampler.model_wrap_cfg.inner_model, model_call)
    return lambda model: _TrackLayout(model, layout)


def before_sampling(p: Any, plan: JobPlan, slot: PassSlot, warn: Callable[[str], None]) -> None:
    """Hook the pass about to sample (`process_before_every_sampling`) with the plan's hooks."""
    pass_name = "hires" if getattr(p, "is_hr_pass", False) else "first"
    sampler = p.sampler
    wrap_pass_sampler(sampler, plan, pass_name, unet_of(p.sd_model), slot, warn,
                      model_calls=lambda scope: model_calls(p, sampler, slot, scope))


def encode(p: Any, image: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """Image in [-1, 1] -> latent from the VAE's posterior: its mean, or mean + std * noise (LDM's
    `encode_first_stage` would draw an unseeded sample). Runs the encoder modules themselves, so the
    tiled VAE applies when it is on."""
    from modules import devices

    model = p.sd_model
    vae = model.first_stage_model
    moments = vae.encoder(image.to(devices.device, devices.dtype_vae))
    if getattr(vae, "quant_conv", None) is not None:
        moments = vae.quant_conv(moments)
    mean, logvar = moments.float().chunk(2, dim=1)
    z = mean if noise is None else mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise.to(mean)
    return model.scale_factor * z


def use_vae_tiling(p: Any, tiling: VaeTiling, scope: PatchScope) -> None:
    """Tile every decode and encode of the job: the shared VAE's decoder/encoder forwards are patched
    until the job's `scope` is restored (`postprocess`, or defensively at the next job). Idempotent."""
    if not scope.active:
        tiling.install(p.sd_model.first_stage_model, scope)
