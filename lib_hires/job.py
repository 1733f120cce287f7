"""A WebUI job, host-independent: which passes a method runs in, with what, and what the infotext says.

The glue builds `Settings` from the UI, the API dict or an X/Y/Z cell, describes the job's passes
(`PassSize`), and calls `plan_job` before sampling starts. Everything that can go wrong with the
settings for this model and size (unsupported model, a preset for another family, a block the UNet
lacks) becomes a warning here, and the job then runs unmodified (DESIGN.md rule 8).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from torch import nn

from .methods import scalecrafter
from .params import INFOTEXT_PREFIX, General, ScaleCrafterParams, Settings, TiledVAEParams, to_infotext
from .patching import PatchScope
from .sampling.hooks import PassHooks
from .unet import UNetMap, UnsupportedModel, map_unet

NATIVE_SIZE = {"sd1": 512, "sd2": 512, "sdxl": 1024}  # when the host does not know better (SD2-v: 768)


@dataclass(frozen=True)
class PassSize:
    """One sampling pass of the job, in pixels, with its number of sampler steps."""

    name: str  # "first" or "hires"
    width: int
    height: int
    steps: int


@dataclass(frozen=True)
class JobPlan:
    """What runs: a ScaleCrafter plan per pass name, the infotext entries, warnings and a summary line.
    (The tiled VAE is on for the whole job when `tiled_vae(settings)` says so.)"""

    plans: Mapping[str, scalecrafter.Plan]
    infotext: Mapping[str, str]
    warnings: tuple[str, ...]
    summary: str

    @property
    def runs(self) -> bool:
        return bool(self.plans)

    def install(self, pass_name: str, unet: nn.Module, scope: PatchScope, warn: Callable[[str], None]) -> PassHooks:
        """Patch `unet` for one planned sampling pass (undone when `scope` exits); the hooks to sample it with."""
        return scalecrafter.ScaleCrafterPass(self.plans[pass_name], unet, scope, warn).hooks


def passes_for(apply_to: str, hires: bool) -> tuple[str, ...]:
    """The passes "Apply to" selects: auto means the hires pass with hires fix, else the first pass."""
    return {
        "auto": ("hires",) if hires else ("first",),
        "first": ("first",),
        "hires": ("hires",) if hires else (),
        "both": ("first", "hires") if hires else ("first",),
    }[apply_to]


def _warning_entries(warnings: list[str]) -> dict[str, str]:
    return {f"{INFOTEXT_PREFIX}warning": " / ".join(warnings)} if warnings else {}


def tiled_vae(settings: Settings) -> TiledVAEParams | None:
    """The tiled VAE's settings when it runs in this job (it needs no model or size), else None."""
    tiles: TiledVAEParams = settings[TiledVAEParams]
    return tiles if settings[General].enabled and tiles.enabled else None


def plan_job(settings: Settings, unet: nn.Module | None, native: int | None, first: PassSize,
             hires: PassSize | None) -> JobPlan:
    """Plan the job: the method's passes (see `plan_method`) and the tiled VAE."""
    general: General = settings[General]
    if not general.enabled:
        return JobPlan({}, {}, (), "off")
    method = plan_method(settings, unet, native, first, hires)
    tiles = tiled_vae(settings)
    if tiles is None:
        return method
    infotext = {**to_infotext([general, tiles]), **method.infotext}
    mode = {"off": "", "on_nan": ", fp32 on NaN", "always": ", fp32"}[tiles.fp32]
    sizes = ", ".join(f"{name} {tile or 'auto'}" for name, tile in (("decoder", tiles.decoder_tile),
                                                                    ("encoder", tiles.encoder_tile)))
    summary = f"Tiled VAE ({sizes}{mode})" + ("" if method.summary == "off" else f"; {method.summary}")
    return replace(method, infotext=infotext, summary=summary)


def plan_method(settings: Settings, unet: nn.Module | None, native: int | None, first: PassSize,
                hires: PassSize | None) -> JobPlan:
    """Plan the method's passes; nothing runs (and only warnings are written) when the settings
    cannot apply."""
    general: General = settings[General]
    if general.method == "none":
        return JobPlan({}, {}, (), "off")
    warnings: list[str] = []
    try:
        unet_map: UNetMap = map_unet(unet)
    except UnsupportedModel as exc:
        warnings.append(f"unsupported model, job ran unmodified ({exc})")
        return JobPlan({}, _warning_entries(warnings), tuple(warnings), warnings[0])
    native = native or NATIVE_SIZE[unet_map.family.value]
    params: ScaleCrafterParams = settings[ScaleCrafterParams]
    names = passes_for(params.apply_to, hires is not None)
    if params.apply_to == "hires" and hires is None:
        warnings.append("ScaleCrafter is set to the hires pass but hires fix is off")
    plans: dict[str, scalecrafter.Plan] = {}
    lines: list[str] = []
    for size in (first, hires):
        if size is None or size.name not in names:
            continue
        try:
            resolution = scalecrafter.resolve(params, settings.given, unet_map.family, native, size.width,
                                              size.height)
            plan = scalecrafter.bind(resolution, unet_map)
        except scalecrafter.SettingError as exc:
            warnings.append(f"ScaleCrafter not applied to the {size.name} pass: {exc}")
            continue
        lines.append(f"{size.name} pass {size.width}x{size.height}: {scalecrafter.describe(resolution, size.steps)}")
        if not resolution.empty:
            plans[size.name] = plan
    if not plans:
        return JobPlan({}, _warning_entries(warnings), tuple(warnings), "; ".join(lines + warnings) or "off")
    last = plans[list(plans)[-1]].resolution
    entries = to_infotext([general, scalecrafter.resolved_params(params, last)])
    entries[f"{INFOTEXT_PREFIX}ScaleCrafter setting"] = " / ".join(
        f"{name} pass: {plan.resolution.source}" for name, plan in plans.items())
    entries.update(_warning_entries(warnings))
    return JobPlan(plans, entries, tuple(warnings), "; ".join(lines + warnings))


def preview(settings: Settings, unet: nn.Module, native: int | None, first: PassSize,
            hires: PassSize | None) -> tuple[str, ScaleCrafterParams | None]:
    """What the UI shows before Generate: the summary line, and the ScaleCrafter values the preset
    resolves to for the last pass it runs in (None while the user edits them: preset Custom, or
    nothing runs)."""
    enabled = settings[General].enabled
    plan = plan_job(settings if enabled else settings.with_overrides({"enabled": True}), unet, native, first, hires)
    summary = plan.summary if enabled else f"(off) {plan.summary}"
    params: ScaleCrafterParams = settings[ScaleCrafterParams]
    if params.preset == "custom" or not plan.plans:
        return summary, None
    return summary, scalecrafter.resolved_params(params, plan.plans[list(plan.plans)[-1]].resolution)
