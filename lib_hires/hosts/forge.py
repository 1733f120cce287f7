"""Forge (f2.0.1) adapter: the model, and one hooked sampling pass.

* UNet: `p.sd_model.forge_objects.unet` is a `UnetPatcher`; its `model.diffusion_model` keeps the LDM
  module tree. Forge resets `forge_objects` before every pass, so model-call hooks go on a *clone*
  (`set_model_unet_function_wrapper`, chained to any wrapper already there) and there is nothing to
  undo; the hires pass calls `process_before_every_sampling` twice, and each call simply redoes it.
* Model calls: the wrapper gets `apply_model` (unscaled latent, sigma -> denoised) and the batch as
  chunks of one batch each, `cond_or_uncond` saying which chunk is cond (0) or uncond (1).
* The conv modules are shared by every clone, so the UNet itself is patched inside the sampler run
  only and restored in `finally` (`hosts.sampler.wrap_pass_sampler`).
* Tiled VAE: `set_model_vae_decode_wrapper` / `..._encode_wrapper` on a clone of `forge_objects.vae`.
* ControlNet (built in): Forge evaluates the ControlNets (`c["control_model"]`, a linked list) on the
  whole batch before the wrapper, and hands their residuals in `c["control"]`. While a pass of ours
  samples, that evaluation runs on an 8x8 corner only (a `controlnet_conditioning_modifiers` entry on
  our clone) and `ControlNets` evaluates them again at the end of the hook chain, on each call's own
  input, with each net's hint (Forge's own resize of it to the pass's latent) through the call's
  `pixels`: every tile, window and lattice gets the hint of its own pixels.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..job import JobPlan
from ..patching import PatchScope
from ..sampling.hooks import ModelCall, PassSlot, Rows, take_rows
from ..ui import UiModel
from ..unet import family_from_keys
from ..vae.hook import VaeTiling
from .sampler import wrap_pass_sampler

UnetWrapper = Callable[[Callable[..., torch.Tensor], dict[str, Any]], torch.Tensor]


def unet_of(sd_model: Any) -> nn.Module:
    return sd_model.forge_objects.unet.model.diffusion_model


def _checkpoint_keys(path: str) -> list[str]:
    """Tensor names of a .safetensors file from its header alone ([] for other files)."""
    if not path.endswith(".safetensors"):
        return []
    with open(path, "rb") as file:
        size = struct.unpack("<Q", file.read(8))[0]
        return list(json.loads(file.read(min(size, 100 << 20))))


def ui_model() -> UiModel:
    """The model the accordion plans for. Forge loads the selected checkpoint at the first generation;
    until then (or after another one is selected) the family is read from the checkpoint's header."""
    from modules import sd_models, shared

    selected = shared.opts.sd_model_checkpoint or ""
    model = sd_models.model_data.sd_model
    info = sd_models.get_closet_checkpoint_match(selected)
    if info is not None and getattr(model, "sd_checkpoint_info", None) == info:
        try:
            return UiModel(unet_of(model), native_size(model), None, selected)
        except AttributeError:  # not a UNet model (e.g. Flux): the plan says so
            return UiModel(nn.Identity(), None, None, selected)
    try:
        family = family_from_keys(_checkpoint_keys(info.filename)) if info is not None else None
    except (OSError, ValueError, struct.error):
        family = None
    return UiModel(None, None, family, selected)


def native_size(sd_model: Any) -> int | None:
    """1024 for SDXL, 768 for v-prediction SD2 models; None lets the family decide (512)."""
    if getattr(sd_model, "is_sdxl", False):
        return 1024
    predictor = getattr(sd_model.forge_objects.unet.model, "predictor", None)
    if getattr(sd_model, "is_sd2", False) and getattr(predictor, "prediction_type", "") == "v_prediction":
        return 768
    return None


def _chunk_kinds(rows: Rows, chunk: int) -> list[int]:
    """`cond_or_uncond` for rows laid out in chunks of `chunk` rows (0 = cond, 1 = uncond)."""
    return [1 if rows.uncond[start] else 0 for start in range(0, len(rows.uncond), chunk)]


def _take_forge_cond(c: dict[str, Any], indices: Sequence[int], total: int, rows: Rows, chunk: int) -> dict[str, Any]:
    """Rows of Forge's conditioning dict, with the chunk bookkeeping in `transformer_options` redone."""
    taken = take_rows(c, indices, total)
    kinds = _chunk_kinds(rows.take(indices), chunk)
    options = dict(taken.get("transformer_options", {}))
    options["cond_or_uncond"] = kinds
    options["cond_indices"] = [i for i, kind in enumerate(kinds) if kind == 0]
    options["uncond_indices"] = [i for i, kind in enumerate(kinds) if kind == 1]
    taken["transformer_options"] = options
    return taken


def _chain(head: Any) -> list[Any]:
    nets = []
    while head is not None:
        nets.append(head)
        head = head.previous_controlnet
    return nets


class ControlNets:
    """Forge's ControlNets evaluated where our hooks call the model (module docstring)."""

    def __init__(self, slot: PassSlot) -> None:
        self.slot = slot
        self.evaluating = False

    def modifier(self, net: Any, x: torch.Tensor, t: torch.Tensor, cond: Any, batched: int) -> tuple[Any, ...]:
        """Forge's own evaluation, made before any hook sees the call, shrunk to an 8x8 corner while a pass
        of ours samples (its result is never used: `residuals` replaces it)."""
        if self.slot.current is None or self.evaluating:
            return x, t, cond, batched
        return x[..., :8, :8], t, cond, batched

    def residuals(self, head: Any, call: ModelCall, pass_rows: Rows, latent: tuple[int, int], batched: int) -> Any:
        """`head.get_control` on the call's own input; for a call with `pixels`, every net's hint is Forge's
        resize of it to the pass's `latent`, one row per row of the pass's call, through `pixels`. The nets'
        cached hints are put back afterwards."""
        from backend.misc.image_resize import adaptive_resize

        nets = _chain(head)
        saved = [(net, net.cond_hint, getattr(net, "control_input", None)) for net in nets]
        self.evaluating = True
        try:
            if call.pixels is not None:
                for net in nets:
                    whole = adaptive_resize(net.cond_hint_original, 8 * latent[1], 8 * latent[0], "nearest-exact", "center")
                    per_row = whole[[image % whole.shape[0] for image in pass_rows.image]]
                    net.cond_hint = call.pixels(per_row.float()).to(whole.dtype)
                    if hasattr(net, "control_input"):
                        net.control_input = None
            return head.get_control(call.x, call.sigma, dict(call.cond), batched)
        finally:
            self.evaluating = False
            for net, hint, control_input in saved:
                net.cond_hint = hint
                if hasattr(net, "control_input"):
                    net.control_input = control_input


def unet_wrapper(slot: PassSlot, previous: UnetWrapper | None, controls: ControlNets | None = None) -> UnetWrapper:
    """The `model_function_wrapper` routing Forge's batched calls through the current pass's hooks,
    then to `previous` (another extension's wrapper, never an earlier one of ours); with `controls`,
    the ControlNets are evaluated at the end of the chain."""
    previous = getattr(previous, "hires_methods_previous", previous)

    def run(apply_model: Callable[..., torch.Tensor], args: dict[str, Any]) -> torch.Tensor:
        if previous is not None:
            return previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def wrapper(apply_model: Callable[..., torch.Tensor], args: dict[str, Any]) -> torch.Tensor:
        current = slot.current
        if current is None or current.step is None:
            return run(apply_model, args)
        x = args["input"]
        kinds = list(args["cond_or_uncond"])
        chunk = x.shape[0] // len(kinds)
        rows = Rows(tuple(i % chunk for i in range(x.shape[0])), tuple(kinds[i // chunk] == 1 for i in range(x.shape[0])))

        head = args["c"].get("control_model") if controls is not None else None
        latent = (x.shape[-2], x.shape[-1])

        def base(call: ModelCall) -> torch.Tensor:
            c = call.cond
            if head is not None:
                assert controls is not None
                kinds = _chunk_kinds(call.rows, chunk)
                c = {**c, "control": controls.residuals(head, call, rows, latent, len(kinds))}
            return run(apply_model, {**args, "input": call.x, "timestep": call.sigma, "c": c,
                                     "cond_or_uncond": _chunk_kinds(call.rows, chunk)})

        call = ModelCall(x, args["timestep"], args["c"], rows, current.step,
                         take_cond=lambda c, idx: _take_forge_cond(c, idx, x.shape[0], rows, chunk),
                         controlled=head is not None)
        return current.call(call, base)

    wrapper.hires_methods_previous = previous  # type: ignore[attr-defined]
    return wrapper


def _wrapped_unet(p: Any, slot: PassSlot) -> Any:
    """A clone of the pass's `UnetPatcher` whose model calls go through `slot`, ControlNets included."""
    patcher = p.sd_model.forge_objects.unet.clone()
    previous = patcher.model_options.get("model_function_wrapper")
    controls = ControlNets(slot)
    patcher.set_model_unet_function_wrapper(unet_wrapper(slot, previous, controls))
    options = patcher.model_options.setdefault("transformer_options", {})
    others = [m for m in options.get("controlnet_conditioning_modifiers", [])
              if not isinstance(getattr(m, "__self__", None), ControlNets)]  # Forge's second hires hook call
    options["controlnet_conditioning_modifiers"] = [*others, controls.modifier]
    return patcher


def model_calls(p: Any, sampler: Any, slot: PassSlot, scope: PatchScope) -> Callable[[Any], Any]:
    """Route a cascade stage's model calls through `slot`: our clone of the UNet patcher is the pass's
    until `scope` exits. The denoiser needs no wrapper (Forge's wrapper sees the layout)."""
    scope.set_attr(p.sd_model.forge_objects, "unet", _wrapped_unet(p, slot))
    return lambda model: model


def before_sampling(p: Any, plan: JobPlan, slot: PassSlot, warn: Callable[[str], None]) -> None:
    """Hook the pass about to sample (`process_before_every_sampling`) with the plan's hooks. Forge
    replaces `forge_objects` before every pass, so the clone needs no undoing."""
    pass_name = "hires" if getattr(p, "is_hr_pass", False) else "first"
    patcher = _wrapped_unet(p, slot)
    p.sd_model.forge_objects.unet = patcher
    wrap_pass_sampler(p.sampler, plan, pass_name, patcher.model.diffusion_model, slot, warn)


def encode(p: Any, image: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """Image in [-1, 1] -> latent from the VAE's posterior: its mean, or mean + std * noise (Forge's own
    encode draws an unseeded sample), through a clone of the pass's VAE (the tiled VAE's, when on)."""
    vae = p.sd_model.forge_objects.vae.clone()
    taken = 0

    def regulation(posterior: Any) -> torch.Tensor:
        nonlocal taken
        if noise is None:
            return posterior.mean
        rows = posterior.mean.shape[0]
        part = noise[taken:taken + rows].to(posterior.mean)
        taken += rows
        return posterior.mean + posterior.std * part

    vae.patcher.model_options["model_vae_regulation"] = regulation
    latent = vae.encode(image.movedim(1, -1) * 0.5 + 0.5)
    return vae.first_stage_model.process_in(latent).float()


TILING_MARK = "hires_methods_tiling"


def use_vae_tiling(p: Any, tiling: VaeTiling, scope: PatchScope) -> None:
    """Tile every decode and encode: a clone of `forge_objects.vae` whose decode/encode wrappers patch
    the (shared) decoder/encoder forwards for the duration of each call. Forge replaces `forge_objects`
    per batch and pass, so this runs at the job's start (for img2img's init encode) and before every
    pass; `scope` puts the original VAE back into each `forge_objects` at the end of the job, so no
    later job starts from our clone. Idempotent."""
    objects = p.sd_model.forge_objects
    if getattr(objects.vae, TILING_MARK, False):
        return
    clone = objects.vae.clone()

    def tiled_call(inner: Callable[[torch.Tensor], torch.Tensor], samples: torch.Tensor) -> torch.Tensor:
        with PatchScope() as call_scope:
            tiling.install(clone.first_stage_model, call_scope)
            return inner(samples)

    clone.patcher.set_model_vae_decode_wrapper(tiled_call)
    clone.patcher.set_model_vae_encode_wrapper(tiled_call)
    setattr(clone, TILING_MARK, True)
    scope.set_attr(objects, "vae", clone)
