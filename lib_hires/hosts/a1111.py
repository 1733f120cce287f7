"""AUTOMATIC1111 WebUI 1.10 adapter: the model, and one hooked sampling pass.

* UNet: `p.sd_model.model.diffusion_model` (the LDM `UNetModel`).
* Model calls: A1111's CFG denoiser calls its inner k-diffusion wrapper (`CompVisDenoiser`, or the
  timestep wrapper for DDIM/PLMS/UniPC) with all cond rows (each image repeated once per AND
  sub-prompt) followed by one uncond row per image, in one call or in consecutive chunks
  (`batch_cond_uncond` off, prompts of different lengths, skipped uncond). `CfgLayout` learns the
  layout from each denoiser call's conditioning and hands out the rows of each chunk in order.
* The UNet is patched inside the sampler run only (`hosts.sampler.wrap_pass_sampler`); the tiled VAE
  for the whole job (decoder/encoder forwards of `p.sd_model.first_stage_model`).
* ControlNet (the sd-webui-controlnet extension): its hook on the UNet's forward reads each unit's
  hint (`ControlParams.hint_cond`, `hr_hint_cond` in the hires pass) and whether the unit is on at this
  step (`guidance_stopped`, from A1111's step counter). `ControlUnits` sets both for each model call at
  the end of our hook chain: the pass's hint resized to the pass's latent (a cascade stage's size)
  through the call's `pixels` (tiles, windows, lattices), and the unit's start/end as fractions of the
  steps of the pass or stage being sampled; everything is put back after the call.
* LoRA with A1111's option "use the functional form": `network_forward` adds each LoRA's own branch
  after the conv; `follow_dilation` makes the branches of 3x3 convs use the conv's dilation and
  padding of the moment, so a re-dilated conv's LoRA part is re-dilated with it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..job import JobPlan
from ..ops import control_hint
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


def control_params(p: Any) -> list[Any]:
    """The ControlNet units sd-webui-controlnet has hooked into this job's UNet (none without it)."""
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or []:
        params = getattr(getattr(script, "latest_network", None), "control_params", None)
        if params:
            return list(params)
    return []


class ControlUnits:
    """sd-webui-controlnet's units, given each model call's hint and schedule (module docstring)."""

    def __init__(self, params: list[Any], hires: bool) -> None:
        self.params = params
        self.hires = hires

    def _source(self, param: Any) -> torch.Tensor:
        hr = getattr(param, "hr_hint_cond", None)
        return hr if self.hires and isinstance(hr, torch.Tensor) else param.hint_cond

    def run(self, call: ModelCall, pass_rows: Rows, latent: tuple[int, int], model: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`model()` with every unit's hint for `call` (pass's rows and `latent` size) and its on/off state
        for the call's step; the units' own values are restored afterwards, also on errors."""
        fraction = call.step.index / max(call.step.count, 1)
        with PatchScope() as scope:
            for param in self.params:
                scope.set_attr(param, "guidance_stopped", not (
                    param.start_guidance_percent <= fraction <= param.stop_guidance_percent))
                source = self._source(param)
                if not isinstance(source, torch.Tensor) or source.dim() != 4:
                    continue  # a unit without a spatial hint (e.g. reference, IP-Adapter embeddings)
                size = (latent[0] * control_hint.SCALE, latent[1] * control_hint.SCALE)
                if call.pixels is None and tuple(source.shape[-2:]) == size:
                    continue  # the pass's own call at the hint's size: the extension's own path
                hint = _view(source, call, pass_rows, size)
                for name, value in (("_hint_cond", hint), ("hr_hint_cond", hint if self.hires else None),
                                    ("used_hint_cond", hint), ("used_hint_cond_latent", None),
                                    ("used_hint_inpaint_hijack", None)):
                    scope.set_attr(param, name, value)
                mask = getattr(param, "effective_region_mask", None)
                if isinstance(mask, torch.Tensor) and mask.dim() == 4:
                    scope.set_attr(param, "effective_region_mask", _view(mask, call, pass_rows, size))
            return model()


def _view(image: torch.Tensor, call: ModelCall, pass_rows: Rows, size: tuple[int, int]) -> torch.Tensor:
    """A unit's image (hint or region mask, one per image or one for all) as the rows of `call` see it:
    resized to the pass's latent (`size` in hint pixels), one row per row of the pass's call, then the
    call's `pixels`."""
    whole = control_hint.resize(image.float(), *size)
    return call.pixel_map()(whole[[row % whole.shape[0] for row in pass_rows.image]]).to(image)


def model_calls(p: Any, sampler: Any, slot: PassSlot, scope: PatchScope) -> Callable[[Any], Any]:
    """Route the sampler's batched model calls through `slot` until `scope` exits (the inner model's
    forward is wrapped, and functional LoRA branches follow re-dilation); returns the wrapper for the
    CFG denoiser, which learns each call's layout."""
    layout = CfgLayout()
    params = control_params(p)
    units = ControlUnits(params, bool(getattr(p, "is_hr_pass", False))) if params else None
    follow_dilation(scope)

    def model_call(original: Callable[..., torch.Tensor], x: torch.Tensor, sigma: torch.Tensor,
                   **kwargs: Any) -> torch.Tensor:
        current = slot.current
        if current is None or current.step is None:
            return original(x, sigma, **kwargs)
        rows, latent = x.shape[0], (x.shape[-2], x.shape[-1])
        call = ModelCall(x, sigma, kwargs.get("cond"), layout.take(rows), current.step,
                         take_cond=lambda cond, idx: take_rows(cond, idx, rows), controlled=units is not None)

        def base(c: ModelCall) -> torch.Tensor:
            def model() -> torch.Tensor:
                return original(c.x, c.sigma, **{**kwargs, "cond": c.cond})

            return model() if units is None else units.run(c, call.rows, latent, model)

        return current.call(call, base)

    scope.wrap_forward(sampler.model_wrap_cfg.inner_model, model_call)
    return lambda model: _TrackLayout(model, layout)


def follow_dilation(scope: PatchScope) -> None:
    """Until `scope` exits, every functional LoRA branch of a 3x3 (or larger) conv runs with the conv's
    current dilation and padding (`lora_branches_follow`), for the networks A1111 has loaded."""
    try:
        import networks  # A1111's built-in Lora extension
    except ImportError:
        return
    lora_branches_follow(getattr(networks, "loaded_networks", []), scope)


def lora_branches_follow(loaded: list[Any], scope: PatchScope) -> None:
    """Patch the forward of each conv branch of the `loaded` networks (A1111's `NetworkModule`s: `sd_module`,
    `calc_updown(weight) -> (delta weight, bias)`, `forward(x, y)` adding the branch to the conv's `y`)
    so that while its conv runs dilated (`ops.redilation` sets `dilation` and `padding` on the conv for
    the call) the branch is the same delta run as a conv at that dilation.
    A conv at its own dilation keeps the network's own forward."""
    for network in loaded:
        for module in getattr(network, "modules", {}).values():
            conv = getattr(module, "sd_module", None)
            if isinstance(conv, nn.Conv2d) and max(conv.kernel_size) > 1:
                scope.set_attr(module, "forward", _dilated_branch(module, conv, module.forward))


def _dilated_branch(module: Any, conv: nn.Conv2d, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    own_dilation = conv.dilation

    def branch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if conv.dilation == own_dilation:
            return forward(x, y)
        delta, bias = module.calc_updown(conv.weight)
        delta = delta.to(x).reshape(conv.weight.shape)
        return y + torch.nn.functional.conv2d(x, delta, None if bias is None else bias.to(x), conv.stride,
                                              conv.padding, conv.dilation, conv.groups)

    return branch


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
