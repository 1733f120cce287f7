"""ScaleCrafter (He et al., ICLR 2024): one pass at the target size with re-dilated convolutions.

For the first `tau` of a pass's steps the chosen 3x3 convs of the UNet run re-dilated (§3.1,
`ops.redilation`), optionally decaying progressively (methods/scalecrafter.md §3) and with dispersed
5x5 kernels (§3.3, App. F). Noise-damped CFG (§3.2) takes the unconditional prediction from a UNet
dilated only on a central block set, for its own `tau` (`sampling.guidance`). The values come from
the official per-resolution configs or the paper's tables (`presets.py`), or from the user.

Three steps, each usable alone, and the method object that runs them for a job:

* `resolve`: parameters + the pass's size -> per-block values (`Resolution`). No model needed.
* `bind`: a resolution + a UNet's block map + the pass's latent size -> per-conv factors (`Plan`),
  refusing blocks the UNet lacks and paddings beyond the feature map.
* `ScaleCrafterPass`: installs a dispatcher on each planned conv (in a `PatchScope`) and provides the
  call hook that switches factors per step and runs the noise-damped pass.
* `ScaleCrafter` (`methods.base.Method`): the passes "Apply to" selects, each resolved for its size.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..ops.dispersion import disperse_kernel, solve_dispersion
from ..ops.redilation import dispersed_forward, progressive_factor, redilated_forward
from ..params import ScaleCrafterParams, fields
from ..patching import PatchScope
from ..presets import PRESETS, ResolvedPreset, auto_preset, get_preset, resolve_preset
from ..sampling.guidance import noise_damped_cfg
from ..sampling.hooks import CallNext, ModelCall, PassHooks, Warn
from ..sampling.steps import steps_for_fraction
from ..unet import ModelFamily, UNetMap, format_block_values, level_size, parse_block_list, parse_block_values
from .base import JobContext, MethodPlan, PassSize

PAPER_STEPS = 50  # the presets' tau values are step counts of a 50-step schedule (DESIGN.md rule 7)


class SettingError(ValueError):
    """A setting that cannot apply to this model or size; `key` is the API key to blame."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class Resolution:
    """What a pass does, per block: factors, fractions of the pass's steps, ND-CFG set, dispersion."""

    source: str  # e.g. "Auto: SD1.5 2048x2048 (code) scaled x0.75"
    dilation: Mapping[str, float]
    tau: float
    progressive: bool
    ndcfg_dilation: Mapping[str, float]  # empty: ND-CFG off
    ndcfg_tau: float
    disperse: tuple[str, ...]  # empty: dispersion off

    @property
    def empty(self) -> bool:
        return not self.dilation or self.tau == 0


def _preset_values(params: ScaleCrafterParams, family: ModelFamily, native: int, width: int,
                   height: int) -> tuple[str, ResolvedPreset | None]:
    if params.preset == "custom":
        return "Custom", None
    if params.preset == "auto":
        return "Auto", auto_preset(family, width, height, native)
    preset = get_preset(params.preset)
    if preset.family != family:
        raise SettingError("scalecrafter_preset",
                           f"{preset.label} is for {preset.family.label} models; this model is {family.label}")
    return "Preset", resolve_preset(preset.key)


def resolve(params: ScaleCrafterParams, given: frozenset[str], family: ModelFamily, native: int,
            width: int, height: int) -> Resolution:
    """The values for a pass at `width` x `height` pixels: the preset's (Auto rescales the official
    setting nearest to the size), with every `from_preset` field in `given` taken from `params`."""
    kind, preset = _preset_values(params, family, native, width, height)
    values = {
        "dilation": parse_block_values(params.dilation), "tau": params.tau, "progressive": params.progressive,
        "ndcfg_dilation": parse_block_values(params.ndcfg_dilation), "ndcfg_tau": params.ndcfg_tau,
        "disperse_blocks": parse_block_list(params.disperse_blocks),
    }
    source = "Custom"
    if preset is not None:
        from_preset = {
            "dilation": dict(preset.dilation), "tau": preset.tau / PAPER_STEPS, "progressive": preset.progressive,
            "ndcfg_dilation": dict(preset.ndcfg_dilation), "ndcfg_tau": preset.ndcfg_tau / PAPER_STEPS,
            "disperse_blocks": preset.disperse,
        }
        overridden = [f.name for f in fields(ScaleCrafterParams) if f.spec.from_preset and f.api_key in given]
        values = {name: values[name] if name in overridden else value for name, value in from_preset.items()}
        source = f"{kind}: {preset.description}" + (f" (set: {', '.join(overridden)})" if overridden else "")
    dispersed = tuple(values["disperse_blocks"]) if params.disperse else ()
    dilated_blocks = {key.partition(".")[0] for key in values["dilation"]}
    undilated = [block for block in dispersed if block.partition(".")[0] not in dilated_blocks]
    if undilated:
        raise SettingError("scalecrafter_disperse_blocks",
                           f"dispersed blocks must also be dilated; not dilated: {', '.join(undilated)}")
    return Resolution(source, values["dilation"], values["tau"], values["progressive"],
                      values["ndcfg_dilation"] if params.ndcfg else {}, values["ndcfg_tau"] if params.ndcfg else 0.0,
                      dispersed)


def resolved_params(params: ScaleCrafterParams, resolution: Resolution) -> ScaleCrafterParams:
    """`params` with the `from_preset` fields replaced by what the resolution uses (for the infotext)."""
    return dataclasses.replace(
        params, dilation=format_block_values(resolution.dilation), tau=resolution.tau,
        progressive=resolution.progressive, ndcfg_dilation=format_block_values(resolution.ndcfg_dilation),
        ndcfg_tau=resolution.ndcfg_tau,
        disperse_blocks=" ".join(resolution.disperse) if params.disperse else params.disperse_blocks)


def describe(resolution: Resolution, steps: int) -> str:
    """One line for the UI and the logs: source, factors per block, steps."""
    if resolution.empty:
        return f"left as it is ({resolution.source})"
    blocks = ", ".join(f"{k} {int(v) if v.is_integer() else v}" for k, v in resolution.dilation.items())
    tau = steps_for_fraction(resolution.tau, steps)
    text = f"{resolution.source} | {blocks} | first {tau} of {steps} steps"
    if resolution.progressive:
        text += ", progressive"
    if resolution.ndcfg_dilation and resolution.ndcfg_tau > 0:
        nd = ", ".join(f"{k} {int(v) if v.is_integer() else v}" for k, v in resolution.ndcfg_dilation.items())
        text += f" | ND-CFG {nd} for {steps_for_fraction(resolution.ndcfg_tau, steps)} steps"
    if resolution.disperse:
        text += f" | dispersed {' '.join(resolution.disperse)}"
    return text


@dataclass(frozen=True)
class Plan:
    """A resolution bound to one UNet: factor per conv path (main and noise-damped), dispersed convs."""

    resolution: Resolution
    convs: Mapping[str, float]
    nd_convs: Mapping[str, float]
    dispersed: frozenset[str]

    def install(self, unet: nn.Module, scope: PatchScope, warn: Warn) -> PassHooks:
        """Patch `unet`'s planned convs (undone when `scope` exits); the hooks that switch them per step."""
        return ScaleCrafterPass(self, unet, scope, warn).hooks


def bind(resolution: Resolution, unet_map: UNetMap, latent: tuple[int, int]) -> Plan:
    """Map block keys onto the UNet's eligible convs for a pass whose latent is `latent` (h, w).

    `SettingError` for a block or part this UNet lacks, and for a factor whose padding would reach
    beyond the feature map it pads: a conv re-dilated by `f` pads its input by `ceil(f)` pixels per
    side (a dispersed one by `2 ceil(f / 2)`), which must not exceed the map's shorter side at that
    block's level (from there on every off-centre tap reads padding only, and the padded input grows
    without bound).
    """
    parts = {}
    for key, blocks in (("scalecrafter_dilation", resolution.dilation),
                        ("scalecrafter_ndcfg_dilation", resolution.ndcfg_dilation),
                        ("scalecrafter_disperse_blocks", dict.fromkeys(resolution.disperse, 1.0))):
        try:
            parts[key] = unet_map.conv_values(blocks)
        except KeyError as exc:
            raise SettingError(key, str(exc.args[0])) from None
    dispersed = frozenset(parts["scalecrafter_disperse_blocks"]) & frozenset(parts["scalecrafter_dilation"])
    for key in ("scalecrafter_dilation", "scalecrafter_ndcfg_dilation"):
        blocks = resolution.dilation if key == "scalecrafter_dilation" else resolution.ndcfg_dilation
        for block, factor in blocks.items():
            for conv in unet_map.conv_values({block: factor}):
                _check_padding(key, block, factor, conv in dispersed, unet_map.conv_level(conv), latent)
    return Plan(resolution, parts["scalecrafter_dilation"], parts["scalecrafter_ndcfg_dilation"], dispersed)


def _check_padding(key: str, block: str, factor: float, dispersed: bool, level: int, latent: tuple[int, int]) -> None:
    side = min(level_size(latent[0], level), level_size(latent[1], level))
    padding = 2 * math.ceil(factor / 2) if dispersed else math.ceil(factor)
    if padding > side:
        largest = 2 * (side // 2) if dispersed else side
        allowed = f"the largest factor there is {largest}" if largest >= 2 else "no factor above 1 fits"
        kind = "dispersed " if dispersed else ""
        raise SettingError(key, f"{block}={_num(factor)} would pad a {kind}conv's {side}-pixel feature map by "
                                f"{padding} pixels per side, beyond the map ({allowed} at this size)")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def factors_at(convs: Mapping[str, float], index: int, tau: int, progressive: bool) -> Mapping[str, float]:
    """The factor of every conv at step `index`: all of them before `tau`, progressively decayed if
    asked (methods/scalecrafter.md §3), none from `tau` on."""
    if index >= tau:
        return {}
    if not progressive:
        return convs
    decayed = {path: progressive_factor(factor, tau, index) for path, factor in convs.items()}
    return {path: factor for path, factor in decayed.items() if factor > 1}


class ScaleCrafterPass:
    """One sampling pass of ScaleCrafter on a UNet.

    The constructor wraps every planned conv's forward in `scope` with a dispatcher that reads the
    factors of the model call in progress (none outside one, so the conv is then the original); the
    call hook sets them per step. Restoring `scope` removes every wrapper.
    """

    def __init__(self, plan: Plan, unet: nn.Module, scope: PatchScope, warn: Warn) -> None:
        self.plan = plan
        self.active: Mapping[str, float] = {}
        self.kernels: dict[str, torch.Tensor] = {}
        self.R = solve_dispersion() if plan.dispersed else None
        self.warn = warn
        self.ndcfg_warned = False  # said once per pass that the host split cond and uncond rows
        for path in dict.fromkeys([*plan.convs, *plan.nd_convs]):
            conv = unet.get_submodule(path)
            scope.wrap_forward(conv, self._dispatcher(path, conv))

    @property
    def hooks(self) -> PassHooks:
        return PassHooks(call_hooks=(self.call_hook,))

    def _dispatcher(self, path: str, conv: nn.Module):  # type: ignore[no-untyped-def]
        def forward(original, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
            factor = self.active.get(path, 1.0)
            if factor == 1.0:
                return original(x)
            if path in self.plan.dispersed and self.R is not None:
                return dispersed_forward(conv, x, factor, self._kernel(path, conv, original, x))
            return redilated_forward(conv, original, x, factor)

        return forward

    def _kernel(self, path: str, conv: nn.Module, original, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
        if path not in self.kernels:
            original(x)  # a host applying LoRA inside the conv's forward (A1111) updates conv.weight here
            self.kernels[path] = disperse_kernel(conv.weight.detach(), self.R)
        return self.kernels[path]

    @contextlib.contextmanager
    def _using(self, factors: Mapping[str, float]) -> Iterator[None]:
        previous, self.active = self.active, factors
        try:
            yield
        finally:
            self.active = previous

    def call_hook(self, call: ModelCall, call_next: CallNext) -> torch.Tensor:
        res = self.plan.resolution
        index, count = call.step.index, call.step.count
        tau = steps_for_fraction(res.tau, count)
        with self._using(factors_at(self.plan.convs, index, tau, res.progressive)):
            out = call_next(call)
        nd_tau = steps_for_fraction(res.ndcfg_tau, count)
        if not self.plan.nd_convs or index >= nd_tau:
            return out
        with_cond = {image for image, unc in zip(call.rows.image, call.rows.uncond) if not unc}
        uncond = [i for i in call.rows.where(uncond=True) if call.rows.image[i] in with_cond]
        if len(uncond) < len(set(call.rows.image)):
            if not self.ndcfg_warned:
                self.warn("noise-damped CFG skipped where the host evaluated cond and uncond rows in separate "
                          "calls (A1111: keep 'Batch cond/uncond' on), or CFG scale is 1")
            self.ndcfg_warned = True
        if not uncond:
            return out
        nd_call = call.subset(uncond)
        with self._using(factors_at(self.plan.nd_convs, index, nd_tau, res.progressive)):
            nd_out = call_next(nd_call)
        return noise_damped_cfg(out, call.rows, nd_out, nd_call.rows)


# --- the method: planning a job ----------------------------------------------------------------

def _unused(params: ScaleCrafterParams, given: frozenset[str], resolved: list[tuple[PassSize, Resolution]],
            ) -> dict[str, str]:
    """The given keys no resolved pass used, with the reason (`MethodPlan.unused`). Nothing when no pass
    was resolved: the warnings say why."""
    running = [res for _, res in resolved if not res.empty]
    if not resolved:
        return {}
    if not running:
        where = "; ".join(f"{size.name} pass {size.width}x{size.height}: {res.source}" for size, res in resolved)
        hint = "; give scalecrafter_tau as well, or use preset Custom" if "scalecrafter_tau" not in given else ""
        reason = f"nothing is re-dilated: {where}{hint}"
        keys = [f.api_key for f in fields(ScaleCrafterParams) if f.name not in ("preset", "apply_to")]
        return {key: reason for key in keys if key in given}
    unused: dict[str, str] = {}
    if not any(res.ndcfg_dilation and res.ndcfg_tau > 0 for res in running):
        reason = ("noise-damped CFG is off (scalecrafter_ndcfg: false)" if not params.ndcfg
                  else "the setting has no noise-damped blocks or steps")
        for key in ("scalecrafter_ndcfg_dilation", "scalecrafter_ndcfg_tau"):
            unused[key] = reason
        if params.ndcfg:
            unused["scalecrafter_ndcfg"] = reason
    if not params.disperse:
        unused["scalecrafter_disperse_blocks"] = "dispersed convolution is off (scalecrafter_disperse: false)"
    elif not any(res.disperse for res in running):
        unused["scalecrafter_disperse"] = "the setting has no dispersed blocks"
    return {key: reason for key, reason in unused.items() if key in given}


class ScaleCrafter:
    """The ScaleCrafter method (`methods.base.Method`): each selected pass re-dilated for its own size."""

    params = ScaleCrafterParams
    tabs = ("txt2img", "img2img")

    def presets(self, family: ModelFamily | None) -> tuple[str, ...]:
        return ("auto", *(p.key for p in PRESETS if family is None or p.family == family), "custom")

    def plan(self, params: ScaleCrafterParams, given: frozenset[str], job: JobContext) -> MethodPlan:
        selected = job.selected(params.apply_to)
        warnings: list[str] = []
        if not selected:
            warnings.append("ScaleCrafter is set to the hires pass but hires fix is off")
        plans: dict[str, Plan] = {}
        resolved: list[tuple[PassSize, Resolution]] = []
        lines: list[str] = []
        for size in selected:
            try:
                resolution = resolve(params, given, job.family, job.native, size.width, size.height)
                plan = None if job.unet_map is None else bind(resolution, job.unet_map, size.latent)
            except SettingError as exc:
                warnings.append(f"ScaleCrafter not applied to the {size.name} pass: {exc}")
                continue
            resolved.append((size, resolution))
            lines.append(f"{size.name} pass {size.width}x{size.height}: {describe(resolution, size.steps)}")
            if plan is not None and not resolution.empty:
                plans[size.name] = plan
        shown = [res for _, res in resolved if not res.empty] or [res for _, res in resolved]
        notes = {"setting": " / ".join(f"{name} pass: {plan.resolution.source}" for name, plan in plans.items())}
        return MethodPlan(plans, resolved_params(params, shown[-1]) if shown else params,
                          notes if plans else {}, tuple(lines), tuple(warnings), _unused(params, given, resolved))
