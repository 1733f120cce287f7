"""The method protocol: what every method declares and returns, so that the job planner, the infotext,
the summary line, the accordion and X/Y/Z are derived from declarations instead of method names.

A method is one module in `lib_hires/methods/` with an object satisfying `Method`, listed in
`methods.METHODS`, plus its parameter group in `params.py` (whose `KEY` is the method's API value
and `TITLE` its label). Given its parameters and the job (model, pass sizes, tab) it returns a
`MethodPlan`: per sampling pass a `PassPlan` that patches the UNet and returns the hooks to sample
with, the values it resolved (written to the infotext and shown in the preset-locked UI fields), one
summary line per pass, warnings, and the explicitly given keys it had no use for.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..params import ParamGroup
from ..sampling.driver import Stage
from ..sampling.hooks import PassPlan
from ..unet import ModelFamily, UNetMap


@dataclass(frozen=True)
class PassSize:
    """One sampling pass of the job, in pixels, with its number of sampler steps."""

    name: str  # "first" or "hires"
    width: int
    height: int
    steps: int

    @property
    def latent(self) -> tuple[int, int]:
        """(height, width) of its latent (every supported VAE downsamples by 8)."""
        return self.height // 8, self.width // 8


@dataclass(frozen=True)
class JobContext:
    """What a method plans against: the model family, the UNet's block map, the native size, the
    passes and the tab. `unet_map` is None only for a preview before the model is loaded (Forge loads
    it at the first generation): the method then plans what it can without the UNet (stage sizes,
    values, lines; nothing bound to UNet modules) and the job planner keeps no pass of it."""

    family: ModelFamily
    unet_map: UNetMap | None
    native: int
    first: PassSize
    hires: PassSize | None  # None: hires fix is off (always in img2img)
    tab: str = "txt2img"
    seed: int = 0  # the first image's seed: methods draw their randomness from it (DESIGN.md rule 6)
    cfg_scale: float = 7.0  # the CFG scale of the pass a method replaces (the hires pass's with hires fix)

    @property
    def passes(self) -> tuple[PassSize, ...]:
        return (self.first,) if self.hires is None else (self.first, self.hires)

    @property
    def native_latent(self) -> int:
        """The model's native size in latent pixels (64 for SD1.5, 96 for SD2 768-v, 128 for SDXL)."""
        return self.native // 8

    def selected(self, apply_to: str) -> tuple[PassSize, ...]:
        """The passes an "Apply to" choice selects (see `passes_for`)."""
        names = passes_for(apply_to, self.hires is not None)
        return tuple(size for size in self.passes if size.name in names)


def passes_for(apply_to: str, hires: bool) -> tuple[str, ...]:
    """The passes "Apply to" selects: auto means the hires pass with hires fix, else the first pass."""
    return {
        "auto": ("hires",) if hires else ("first",),
        "first": ("first",),
        "hires": ("hires",) if hires else (),
        "both": ("first", "hires") if hires else ("first",),
    }[apply_to]


@dataclass(frozen=True)
class CascadePlan:
    """A WebUI pass replaced by a cascade of stages (`sampling.driver`). `from_noise`: the direct entry,
    which replaces the first pass and samples its first stage from noise; otherwise the hires-fix
    entry, which replaces the hires pass and starts from the first pass's latent."""

    stages: tuple[Stage, ...]
    from_noise: bool

    @property
    def steps(self) -> int:
        """Sampler steps of the whole cascade."""
        return sum(stage.runs for stage in self.stages)


@dataclass(frozen=True)
class MethodPlan:
    """What a method does in one job.

    `passes` maps a pass name ("first", "hires") to its plan, hooks for the WebUI's own sampling of it
    (`PassPlan`) or a cascade that replaces it (`CascadePlan`); a pass it leaves alone is absent.
    `resolved` is its parameter group with every preset-controlled value replaced by what the plan
    uses (the infotext writes it; the UI shows it in the locked fields); `notes` are further
    infotext entries of the method (label -> text, e.g. where its setting came from). `lines` is one
    line per pass for the summary, `warnings` what the user should know, `unused` the explicitly
    given API keys the plan had no use for, with the reason.
    """

    passes: Mapping[str, PassPlan | CascadePlan]
    resolved: ParamGroup
    notes: Mapping[str, str] = field(default_factory=dict)
    lines: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    unused: Mapping[str, str] = field(default_factory=dict)


class Method(Protocol):
    """A high-resolution method. `params` is its group in `params.py`; `tabs` where it is offered."""

    params: type[ParamGroup]
    tabs: tuple[str, ...]

    def presets(self, family: ModelFamily | None) -> tuple[str, ...]:
        """The choices of the group's `preset` field that suit `family` (all of them for None), in menu
        order; () for a method without presets."""

    def plan(self, params: ParamGroup, given: frozenset[str], job: JobContext) -> MethodPlan:
        """Plan the job. Settings that cannot apply to this model or size become warnings (and the
        affected passes are left out); this never raises for user input that passed validation."""
