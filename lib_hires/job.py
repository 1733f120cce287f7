"""A WebUI job, host-independent: which passes a method runs in, with what, and what the infotext says.

The glue builds `Settings` from the UI, the API dict or an X/Y/Z cell, describes the job's passes
(`PassSize`), and calls `plan_job` before sampling starts. The chosen method (`methods.METHODS`)
plans its passes; everything that can go wrong with the settings for this model and size
(unsupported model, a preset for another family, a block the UNet lacks, a value given but not used)
becomes a warning here, and the affected passes run unmodified (DESIGN.md rule 8). Nothing here
names a method.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from torch import nn

from .methods import METHODS
from .methods.base import CascadePlan, JobContext, MethodPlan, PassPlan, PassSize
from .methods.combine import COMBINATIONS
from .params import (
    COMBINATION_GROUPS,
    FEATURE_GROUPS,
    METHOD_GROUPS,
    WARNING_KEY,
    Combination,
    General,
    ParamGroup,
    Settings,
    TiledVAEParams,
    fields,
    to_infotext,
)
from .patching import PatchScope
from .sampling.hooks import PassHooks, Warn
from .unet import ModelFamily, UNetMap, UnsupportedModel, map_unet

__all__ = ["JobPlan", "PassSize", "Preview", "plan_job", "preview", "tiled_vae"]

NATIVE_SIZE = {"sd1": 512, "sd2": 512, "sdxl": 1024}  # when the host does not know better (SD2-v: 768)


@dataclass(frozen=True)
class JobPlan:
    """What runs: a plan per pass name, the infotext entries, warnings and a summary line.
    (The tiled VAE is on for the whole job when `tiled_vae(settings)` says so.)

    `method` is the chosen method's plan (None when no method runs) and `combined` the values of the
    combinations it runs with, for the UI's locked fields."""

    passes: Mapping[str, PassPlan | CascadePlan] = field(default_factory=dict)
    infotext: Mapping[str, str] = field(default_factory=dict)
    lines: tuple[str, ...] = ()  # what runs, one line per feature and pass
    warnings: tuple[str, ...] = ()
    method: MethodPlan | None = None
    combined: tuple[ParamGroup, ...] = ()

    @property
    def runs(self) -> bool:
        return bool(self.passes)

    @property
    def summary(self) -> str:
        """One line for the log: what runs, then the warnings ("off" when there is nothing)."""
        return "; ".join(self.lines + self.warnings) or "off"

    def install(self, pass_name: str, unet: nn.Module, scope: PatchScope, warn: Warn) -> PassHooks:
        """Patch `unet` for one planned sampling pass (undone when `scope` exits); the hooks to sample it with."""
        plan = self.passes[pass_name]
        assert not isinstance(plan, CascadePlan), "a cascade replaces its pass; it is not installed"
        return plan.install(unet, scope, warn)

    def cascade(self, pass_name: str) -> CascadePlan | None:
        """The cascade replacing pass `pass_name`, if the plan has one."""
        plan = self.passes.get(pass_name)
        return plan if isinstance(plan, CascadePlan) else None


def tiled_vae(settings: Settings) -> TiledVAEParams | None:
    """The tiled VAE's settings when it runs in this job (it needs no model or size), else None."""
    tiles: TiledVAEParams = settings[TiledVAEParams]
    return tiles if settings[General].enabled and tiles.enabled else None


def _warning_entries(warnings: list[str]) -> dict[str, str]:
    return {WARNING_KEY: " / ".join(warnings)} if warnings else {}


def _worth_noting(values: ParamGroup, key: str) -> bool:
    """Whether an unused given key deserves a warning: only when it differs from its default (the UI
    sends every control, and a default says nothing the user meant)."""
    f = next(f for f in fields(type(values)) if f.api_key == key)
    return getattr(values, f.name) != f.default


def _inactive_given(settings: Settings, active: list[type[ParamGroup]]) -> list[str]:
    """Warnings for keys given explicitly (and not at their default) in groups this job does not use."""
    general: General = settings[General]
    notes = []
    for group in (*METHOD_GROUPS, *FEATURE_GROUPS, *COMBINATION_GROUPS):
        if group in active:
            continue
        keys = [f.api_key for f in fields(group)
                if f.api_key in settings.given and getattr(settings[group], f.name) != f.default
                and not (group not in METHOD_GROUPS and f.name == "enabled")]
        if keys:
            why = f"method is {general.method}" if group in METHOD_GROUPS else f"{group.TITLE} is off"
            notes.append(f"not used ({why}): {', '.join(keys)}")
    return notes


def plan_job(settings: Settings, unet: nn.Module | None, native: int | None, first: PassSize,
             hires: PassSize | None, tab: str = "txt2img", family: ModelFamily | None = None,
             seed: int = 0, cfg_scale: float = 7.0) -> JobPlan:
    """Plan the job: the chosen method's passes, the tiled VAE, the infotext and the summary.

    Without a `unet` but with its `family` (a preview before the model is loaded) the method resolves
    its values and summary lines but plans no pass. `seed` (the first image's) seeds the methods'
    randomness; `cfg_scale` is the CFG scale of the pass a method replaces."""
    general: General = settings[General]
    if not general.enabled:
        return JobPlan()
    warnings: list[str] = []
    lines: list[str] = []
    method_plan: MethodPlan | None = None
    combined: list[ParamGroup] = []
    method = METHODS.get(general.method)
    active: list[type[ParamGroup]] = [] if method is None else [method.params]
    if method is not None and tab not in method.tabs:
        warnings.append(f"{method.params.TITLE} is not available in {tab}; the job ran without it")
    elif method is not None:
        unet_map: UNetMap | None = None
        try:
            unet_map = map_unet(unet)
            family = unet_map.family
        except UnsupportedModel as exc:
            if unet is not None or family is None:
                warnings.append(f"unsupported model, job ran unmodified ({exc})")
        if family is not None and (unet_map is not None or unet is None):
            job = JobContext(family, unet_map, native or NATIVE_SIZE[family.value], first, hires, tab, seed, cfg_scale)
            method_plan = method.plan(settings[method.params], settings.given, job)
            lines += [f"{method.params.TITLE}, {line}" for line in method_plan.lines]
            warnings += method_plan.warnings
            warnings += [f"not used: {key} ({why})" for key, why in method_plan.unused.items()
                         if _worth_noting(settings[method.params], key)]
            method_plan, combined = _combine(method_plan, settings, job, lines, warnings)
            active += [type(values) for values in combined]
            if unet_map is None:  # a preview: nothing is bound to a UNet
                method_plan = replace(method_plan, passes={})
    tiles = tiled_vae(settings)
    if tiles is not None:
        active.append(TiledVAEParams)
        mode = {"off": "", "on_nan": ", fp32 on NaN", "always": ", fp32"}[tiles.fp32]
        sizes = ", ".join(f"{name} {tile or 'auto'}" for name, tile in (("decoder", tiles.decoder_tile),
                                                                        ("encoder", tiles.encoder_tile)))
        lines.insert(0, f"Tiled VAE ({sizes}{mode})")
    warnings += _inactive_given(settings, active)
    passes = dict(method_plan.passes) if method_plan is not None else {}
    infotext: dict[str, str] = {}
    if passes or tiles is not None:
        shown: list[ParamGroup] = [general]
        if passes and method_plan is not None:
            shown += [method_plan.resolved, *combined]
        if tiles is not None:
            shown.append(tiles)
        infotext = to_infotext(shown)
        if passes and method_plan is not None and method is not None:
            infotext.update({f"{method.params.TITLE} {label}": text
                             for label, text in method_plan.notes.items()})
    infotext.update(_warning_entries(warnings))
    return JobPlan(passes, infotext, tuple(lines), tuple(warnings), method_plan, tuple(combined))


def _combine(plan: MethodPlan, settings: Settings, job: JobContext, lines: list[str],
             warnings: list[str]) -> tuple[MethodPlan, list[ParamGroup]]:
    """The method's plan with every switched-on combination added (validation has refused those that do not
    fit the method); their lines and warnings appended to `lines` and `warnings`; the values they ran with."""
    combined: list[ParamGroup] = []
    for group in COMBINATION_GROUPS:
        values: Combination = settings[group]
        if not values.enabled:
            continue
        if job.tab not in next(f for f in fields(group) if f.name == "enabled").spec.tabs:
            warnings.append(f"{group.TITLE} is not available in {job.tab}; the job ran without it")
            continue
        added = COMBINATIONS[group](values, settings.given, job, plan.passes)
        plan = replace(plan, passes=added.passes)
        combined.append(added.resolved)
        if not plan.passes:  # the method does not run: neither does the combination (the warnings say why)
            continue
        lines += [f"{group.TITLE}, {line}" for line in added.lines]
        warnings += added.warnings
        warnings += [f"not used: {key} ({why})" for key, why in added.unused.items() if _worth_noting(values, key)]
    return plan, combined


@dataclass(frozen=True)
class Preview:
    """What the UI shows before Generate: whether the extension is on, the plan's lines and warnings as
    if it were on, and the values a preset decides (`locked`: the method's, then its combinations', each
    left out while the user edits them: preset Custom, or no method)."""

    enabled: bool
    lines: tuple[str, ...]
    warnings: tuple[str, ...]
    locked: tuple[ParamGroup, ...]


def preview(settings: Settings, unet: nn.Module | None, native: int | None, first: PassSize,
            hires: PassSize | None, tab: str = "txt2img", family: ModelFamily | None = None) -> Preview:
    """Plan the job as if the extension were on (see `plan_job`), for the accordion's summary line."""
    enabled = settings[General].enabled
    plan = plan_job(settings if enabled else settings.with_overrides({"enabled": True}), unet, native, first, hires,
                    tab, family)
    decided = ((plan.method.resolved,) if plan.method is not None else ()) + plan.combined
    locked = tuple(values for values in decided if getattr(values, "preset", "custom") != "custom")
    return Preview(enabled, plan.lines, plan.warnings, locked)
