"""ScaleCrafter per-resolution presets and the "Auto" rule (ScaleCrafter App. Tables 2-9; scalecrafter.md §6).

Three sets of presets, each a frozen :class:`ScaleCrafterPreset`:

* ``"code"``: the official repository's configs (``configs/*.yaml`` with ``assets/*_settings``), which
  produced the released samples: SD1.5 and SD2.1-base at 1024², 1280², 2048x1024 and 2048², SDXL at
  2048², 2560², 4096x2048 and 4096². The SDXL files use SD-style block names and the official code
  silently skips the ones SDXL lacks, so the SDXL "code" presets hold the *code-effective* sets
  (scalecrafter.md §6.3).
* ``"code-intended"``: SDXL only, the same files with the SD-style names mapped by depth (SD ``DB3``
  -> SDXL ``DB2``, SD ``DB2`` -> SDXL ``DB1`` with its downsampler, up-blocks unchanged). This mapping
  is the project's inference (scalecrafter.md §6.3), not something the official code does.
* ``"paper"``: the paper's appendix tables (SD1.5 and SDXL; scalecrafter.md §6.1, §6.3). A table's
  "noise-damped blocks" are the blocks turned back to the original conv in the noise-damped model
  (§4), so the ND-CFG set is the main set without them. Blocks the paper disperses (a 5x5 kernel at
  dilation 2) are listed in ``disperse`` and dilated here at the equivalent factor 4 (§5.1). The
  paper's SDXL tables use SD-style names DB1..DB3; they are mapped by depth (SD ``DBk`` -> SDXL
  ``DB(k-1)``), which makes every SDXL table symmetric between down and up blocks (project's inference).

Block keys are those of :meth:`lib_hires.unet.UNetMap.conv_values`: ``"DB2"`` (all eligible convs
of the block), ``"DB2.resnets"``, ``"DB2.sampler"``; later keys override earlier ones. Factors are
ScaleCrafter perception-field factors (``lib_hires.ops.redilation``); ``tau`` and ``ndcfg_tau`` are
step counts out of 50 (scalecrafter.md §3). Dispersion is off in every official config
(``inflate_tau: 0``, scalecrafter.md §5.1): ``disperse`` only lists the blocks a user may enable it for.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from lib_hires.unet import ModelFamily

SOURCES = ("code", "code-intended", "paper")

# Native (training) size of the model each table was made for; SD2.x tables are for SD2.1-base.
TABLE_NATIVE: Mapping[ModelFamily, int] = MappingProxyType(
    {ModelFamily.SD1: 512, ModelFamily.SD2: 512, ModelFamily.SDXL: 1024}
)

# Aspect ratios (long side / short side) from this value on are "wide", below it "square".
WIDE_ASPECT = 1.5

_FAMILY_KEY = MappingProxyType(
    {ModelFamily.SD1: "sd15", ModelFamily.SD2: "sd21", ModelFamily.SDXL: "sdxl"}
)
_FAMILY_LABEL = MappingProxyType(
    {ModelFamily.SD1: "SD1.5", ModelFamily.SD2: "SD2.1", ModelFamily.SDXL: "SDXL"}
)


def aspect_class(width: int, height: int) -> str:
    """``"square"`` if ``max/min < 1.5``, else ``"wide"`` (portrait sizes count as wide too)."""
    return "wide" if max(width, height) / min(width, height) >= WIDE_ASPECT else "square"


def _frozen(values: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({key: float(value) for key, value in values.items()})


@dataclass(frozen=True)
class ScaleCrafterPreset:
    """One per-resolution setting (scalecrafter.md §6). Mappings are read-only, in override order."""

    key: str  # stable, for the API and infotext, e.g. "sd15_2048x2048_code"
    label: str  # for the UI, e.g. "SD1.5 2048x2048 (code)"
    family: ModelFamily
    width: int
    height: int
    source: str  # one of SOURCES
    dilation: Mapping[str, float]  # block key -> perception-field factor
    tau: int  # re-dilation for the first `tau` of 50 steps
    progressive: bool
    ndcfg_dilation: Mapping[str, float]  # noise-damped model's set; empty = ND-CFG off
    ndcfg_tau: int
    disperse: tuple[str, ...]  # blocks listed for dispersion (inactive unless enabled)
    note: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        object.__setattr__(self, "dilation", _frozen(self.dilation))
        object.__setattr__(self, "ndcfg_dilation", _frozen(self.ndcfg_dilation))
        object.__setattr__(self, "disperse", tuple(self.disperse))

    @property
    def native(self) -> int:
        return TABLE_NATIVE[self.family]

    @property
    def scale(self) -> float:
        """Target scale of the entry: long side over the table's native size."""
        return max(self.width, self.height) / self.native

    @property
    def aspect(self) -> str:
        return aspect_class(self.width, self.height)


def _preset(family: ModelFamily, width: int, height: int, source: str, dilation: Mapping[str, float],
            tau: int, *, progressive: bool = False, ndcfg: Mapping[str, float] | None = None,
            ndcfg_tau: int = 0, disperse: tuple[str, ...] = (), note: str = "") -> ScaleCrafterPreset:
    suffix = {"code": "code", "code-intended": "intended", "paper": "paper"}[source]
    shown = "code-effective" if (family, source) == (ModelFamily.SDXL, "code") else suffix
    return ScaleCrafterPreset(
        key=f"{_FAMILY_KEY[family]}_{width}x{height}_{suffix}",
        label=f"{_FAMILY_LABEL[family]} {width}x{height} ({shown})",
        family=family, width=width, height=height, source=source, dilation=dilation, tau=tau,
        progressive=progressive, ndcfg_dilation=ndcfg or {}, ndcfg_tau=ndcfg_tau, disperse=disperse,
        note=note,
    )


def _uniform(blocks: tuple[str, ...], factor: float) -> Mapping[str, float]:
    return MappingProxyType(dict.fromkeys(blocks, factor))


def _reverted(dilation: Mapping[str, float], noise_damped: tuple[str, ...]) -> Mapping[str, float]:
    """The paper's noise-damped model: the dilated model with ``noise_damped`` blocks reverted (§4)."""
    return MappingProxyType({k: v for k, v in dilation.items() if k.partition(".")[0] not in noise_damped})


_SD15, _SD21, _SDXL = ModelFamily.SD1, ModelFamily.SD2, ModelFamily.SDXL
_SD_ALL = ("DB0", "DB1", "DB2", "DB3", "MB", "UB0", "UB1", "UB2", "UB3")
_SD_INNER = _SD_ALL[1:-1]  # every block but the outermost pair
_SDXL_ALL = ("DB0", "DB1", "DB2", "MB", "UB0", "UB1", "UB2")
_SDXL_CENTRE = ("DB2", "MB", "UB0")

# §6.1: SD1.5 2048x1024 and 2048x2048 (and SD2.1 2048x1024).
_SD_GRADED = MappingProxyType({"DB1": 2, "DB2": 3, "DB3": 4, "MB": 4, "UB0": 4, "UB1": 3, "UB2": 2})
_SD_GRADED_NDCFG = MappingProxyType({"DB2": 3, "DB3": 4, "MB": 4, "UB0": 4, "UB1": 3})
# §6.2: SD2.1 2048x2048.
_SD21_2048_NDCFG = MappingProxyType(
    {"DB2": 3, "DB2.sampler": 4, "DB3": 4, "MB": 4, "UB0": 4, "UB1": 4, "UB2": 3}
)
_SD21_2048 = MappingProxyType({**_SD21_2048_NDCFG, "UB3": 2})
# §6.3: SDXL code-effective and intended 4096 settings.
_SDXL_4096x2048 = MappingProxyType({"DB2": 3, "MB": 4, "UB0": 4, "UB1": 3, "UB2": 2})
_SDXL_4096x4096 = MappingProxyType({"DB2": 4, "MB": 4, "UB0": 4, "UB1": 3, "UB2": 2})
_SDXL_INTENDED_4096x2048 = MappingProxyType({"DB1": 3, **_SDXL_4096x4096})
_SDXL_INTENDED_4096x4096 = MappingProxyType({"DB1": 4, **_SDXL_4096x4096})
# Paper tables (§6.1, §6.3); dispersed blocks at factor 4.
_SD15_PAPER_2048 = MappingProxyType(
    {"DB0": 2, "DB1": 4, "DB2": 4, "DB3": 4, "MB": 4, "UB0": 4, "UB1": 4, "UB2": 4, "UB3": 2}
)
_SDXL_PAPER_2560 = MappingProxyType(
    {"DB0": 2, "DB1": 2, "DB2": 2.5, "MB": 2.5, "UB0": 2.5, "UB1": 2, "UB2": 2}
)
_SDXL_PAPER_4096 = MappingProxyType({"DB1": 2, "DB2": 4, "MB": 4, "UB0": 4, "UB1": 2})

_SD_DISPERSE = ("DB2.sampler", "DB3", "MB", "UB0", "UB1")
_DISPERSE_NOTE = ("disperse list from the *_disperse.yaml config, which is otherwise identical "
                  "and never disperses (inflate_tau 0)")
_EFFECTIVE_NOTE = ("official file's SD-style names; only the blocks that exist in SDXL "
                   "(the code skips the others)")
_OUTERMOST_NOTE = "; UB2 is the outermost (128-latent) level"
_INTENDED_NOTE = ("project's inference: the official file's SD-style names mapped by depth "
                  "(SD DB3 -> SDXL DB2, SD DB2 -> SDXL DB1 with its downsampler), up-blocks unchanged")
_XL_PAPER_NOTE = "paper's SD-style names mapped by depth (SD DBk -> SDXL DB(k-1)), the project's inference"
_PAPER_DISPERSE_NOTE = "paper disperses {} (5x5 at dilation 2, here factor 4); enable dispersion to follow it"
_ND_NOTE = "ND-CFG: noise-damped blocks {} reverted"

PRESETS: tuple[ScaleCrafterPreset, ...] = (
    # SD1.5, official code (scalecrafter.md §6.1)
    _preset(_SD15, 1024, 1024, "code", _uniform(_SD_INNER, 2), 30),
    _preset(_SD15, 1280, 1280, "code", _uniform(_SD_INNER, 2.5), 35),
    _preset(_SD15, 2048, 1024, "code", _SD_GRADED, 35, progressive=True,
            ndcfg=_SD_GRADED_NDCFG, ndcfg_tau=35),
    _preset(_SD15, 2048, 2048, "code", _SD_GRADED, 35, progressive=True,
            ndcfg=_SD_GRADED_NDCFG, ndcfg_tau=35, disperse=_SD_DISPERSE, note=_DISPERSE_NOTE),
    # SD2.1-base, official code (§6.2)
    _preset(_SD21, 1024, 1024, "code", _uniform(_SD_INNER, 2), 20),
    _preset(_SD21, 1280, 1280, "code", _uniform(_SD_INNER, 2.5), 30),
    _preset(_SD21, 2048, 1024, "code", _SD_GRADED, 37, progressive=True,
            note="ND-CFG off (ndcfg_tau 0); the repository also ships an unused ND-CFG file for this "
                 "size (DB2 3 with its downsampler 4, DB3 4, MB 4, UB0 4, UB1 4, UB2 3)"),
    _preset(_SD21, 2048, 2048, "code", _SD21_2048, 37, progressive=True,
            ndcfg=_SD21_2048_NDCFG, ndcfg_tau=37, disperse=_SD_DISPERSE,
            note="DB1 not dilated, DB2's downsampler 4; " + _DISPERSE_NOTE),
    # SDXL, official code, code-effective sets (§6.3)
    _preset(_SDXL, 2048, 2048, "code", _uniform(("MB", "UB0"), 2), 30, note=_EFFECTIVE_NOTE),
    _preset(_SDXL, 2560, 2560, "code", _uniform(("MB", "UB0"), 2.5), 30, note=_EFFECTIVE_NOTE),
    _preset(_SDXL, 4096, 2048, "code", _SDXL_4096x2048, 35, progressive=True,
            ndcfg=_uniform(("MB", "UB0"), 2), ndcfg_tau=35, note=_EFFECTIVE_NOTE + _OUTERMOST_NOTE),
    _preset(_SDXL, 4096, 4096, "code", _SDXL_4096x4096, 35, progressive=True,
            ndcfg=_uniform(("MB", "UB0"), 2), ndcfg_tau=35, disperse=("DB2", "MB", "UB0"),
            note=_EFFECTIVE_NOTE + _OUTERMOST_NOTE + "; " + _DISPERSE_NOTE),
    # SDXL, official code, intended sets (§6.3)
    _preset(_SDXL, 2048, 2048, "code-intended", _uniform(_SDXL_CENTRE, 2), 30, note=_INTENDED_NOTE),
    _preset(_SDXL, 2560, 2560, "code-intended", _uniform(_SDXL_CENTRE, 2.5), 30, note=_INTENDED_NOTE),
    _preset(_SDXL, 4096, 2048, "code-intended", _SDXL_INTENDED_4096x2048, 35, progressive=True,
            ndcfg=_uniform(_SDXL_CENTRE, 2), ndcfg_tau=35, note=_INTENDED_NOTE),
    _preset(_SDXL, 4096, 4096, "code-intended", _SDXL_INTENDED_4096x4096, 35, progressive=True,
            ndcfg=_uniform(_SDXL_CENTRE, 2), ndcfg_tau=35, disperse=("DB1", "MB", "UB0"),
            note=_INTENDED_NOTE + "; " + _DISPERSE_NOTE),
    # SD1.5, paper tables (§6.1)
    _preset(_SD15, 1024, 1024, "paper", _uniform(("DB3", "MB", "UB0"), 2), 30),
    _preset(_SD15, 1280, 1280, "paper", _uniform(("DB3", "MB", "UB0"), 2.5), 30),
    _preset(_SD15, 2048, 1024, "paper", _uniform(_SD_ALL, 2), 30,
            ndcfg=_reverted(_uniform(_SD_ALL, 2), ("DB0", "DB1", "DB2", "UB1", "UB2", "UB3")), ndcfg_tau=30,
            note=_ND_NOTE.format("DB0, DB1, DB2, UB1, UB2, UB3") + "; the paper gives one tau"),
    _preset(_SD15, 2048, 2048, "paper", _SD15_PAPER_2048, 35, progressive=True,
            ndcfg=_reverted(_SD15_PAPER_2048, ("DB0", "DB1", "UB2", "UB3")), ndcfg_tau=35,
            disperse=("DB2", "DB3", "MB", "UB0", "UB1"),
            note=_PAPER_DISPERSE_NOTE.format("DB2, DB3, MB, UB0, UB1") + "; "
            + _ND_NOTE.format("DB0, DB1, UB2, UB3")),
    # SDXL, paper tables (§6.3)
    _preset(_SDXL, 2048, 2048, "paper", _uniform(_SDXL_CENTRE, 2), 30, note=_XL_PAPER_NOTE),
    _preset(_SDXL, 2560, 2560, "paper", _SDXL_PAPER_2560, 30,
            ndcfg=_reverted(_SDXL_PAPER_2560, ("DB0", "DB1", "UB1", "UB2")), ndcfg_tau=30,
            note=_XL_PAPER_NOTE + "; " + _ND_NOTE.format("(paper DB1, DB2, UB1, UB2)")),
    _preset(_SDXL, 4096, 2048, "paper", _uniform(_SDXL_ALL, 2), 30,
            ndcfg=_reverted(_uniform(_SDXL_ALL, 2), ("DB0", "DB1", "UB1", "UB2")), ndcfg_tau=30,
            note=_XL_PAPER_NOTE + "; " + _ND_NOTE.format("(paper DB1, DB2, UB1, UB2)")),
    _preset(_SDXL, 4096, 4096, "paper", _SDXL_PAPER_4096, 35, progressive=True,
            ndcfg=_reverted(_SDXL_PAPER_4096, ("DB1", "UB1")), ndcfg_tau=35, disperse=_SDXL_CENTRE,
            note=_XL_PAPER_NOTE + "; " + _PAPER_DISPERSE_NOTE.format("paper DB3, MB, UB0") + "; "
            + _ND_NOTE.format("(paper DB2, UB1)")),
)

_BY_KEY: Mapping[str, ScaleCrafterPreset] = MappingProxyType({preset.key: preset for preset in PRESETS})


def get_preset(key: str) -> ScaleCrafterPreset:
    """The preset with this key; ``KeyError`` listing the valid keys otherwise."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown ScaleCrafter preset {key!r}; valid: {', '.join(_BY_KEY)}") from None


def presets_for(family: ModelFamily, source: str | None = None) -> tuple[ScaleCrafterPreset, ...]:
    """The family's presets in table order, optionally of one source only."""
    return tuple(p for p in PRESETS if p.family == family and (source is None or p.source == source))


@dataclass(frozen=True)
class ResolvedPreset:
    """The values a ScaleCrafter run uses, from a named preset or the "Auto" rule.

    ``preset`` is the base preset's key (``None`` when no preset applies) and ``rescale`` the factor
    its dilation factors were multiplied by before rounding (1.0 for a named preset).
    """

    preset: str | None
    rescale: float
    dilation: Mapping[str, float]
    ndcfg_dilation: Mapping[str, float]
    tau: int
    ndcfg_tau: int
    progressive: bool
    disperse: tuple[str, ...]
    description: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilation", _frozen(self.dilation))
        object.__setattr__(self, "ndcfg_dilation", _frozen(self.ndcfg_dilation))
        object.__setattr__(self, "disperse", tuple(self.disperse))

    @property
    def empty(self) -> bool:
        """No conv is re-dilated."""
        return not self.dilation


def resolve_preset(key: str) -> ResolvedPreset:
    """A named preset's values, unscaled."""
    preset = get_preset(key)
    return ResolvedPreset(preset.key, 1.0, preset.dilation, preset.ndcfg_dilation, preset.tau,
                          preset.ndcfg_tau, preset.progressive, preset.disperse, preset.label)


def _round_half(value: float) -> float:
    """Nearest multiple of 0.5, halves rounded up (float noise tolerated: 1.7499999999999998 -> 2.0)."""
    return math.floor(value * 2 + 0.5 + 1e-9) / 2


def _rescaled(values: Mapping[str, float], ratio: float) -> dict[str, float]:
    scaled = {key: _round_half(value * ratio) for key, value in values.items()}
    return {key: value for key, value in scaled.items() if value > 1}


def auto_preset(family: ModelFamily, width: int, height: int, native: int) -> ResolvedPreset:
    """The "Auto" preset: the family's official code preset nearest to the target, rescaled to it.

    Rule (shown in the UI):

    1. Target scale ``s = max(width, height) / native`` (``native``: the loaded model's native size,
       e.g. 512 for SD1.5, 768 for SD2.1-v, 1024 for SDXL). If ``s <= 1`` nothing is dilated.
    2. Candidates: the family's "code" presets (code-effective for SDXL). Of these, the ones of the
       target's aspect class (square if long/short side < 1.5, else wide; portrait counts as wide)
       if there are any.
    3. Pick the candidate whose own scale ``s_entry = max(entry W, H) / entry native`` (512 for the
       SD1.5 and SD2.1-base tables, 1024 for SDXL) is nearest in ``|log s_entry - log s|``; a tie
       goes to the larger entry.
    4. Multiply every dilation and ND-CFG factor by ``s / s_entry``, round to the nearest 0.5
       (halves up) and drop factors <= 1 (those convs stay undilated). tau, ND-CFG tau, progressive
       and the dispersion list are the entry's; ND-CFG is off if its set ends up empty.

    At a table size the entry is returned unscaled.
    """
    if width <= 0 or height <= 0 or native <= 0:
        raise ValueError(f"width, height and native must be positive, got {width}, {height}, {native}")
    target = max(width, height) / native
    if target <= 1:
        return ResolvedPreset(None, 1.0, {}, {}, 0, 0, False, (),
                              f"at or below the model's native size ({native} px), nothing to re-dilate")
    candidates = presets_for(family, "code")
    same_aspect = tuple(p for p in candidates if p.aspect == aspect_class(width, height))
    pool = same_aspect or candidates
    entry = min(pool, key=lambda p: (round(abs(math.log(p.scale) - math.log(target)), 9), -p.scale))
    ratio = target / entry.scale
    dilation = _rescaled(entry.dilation, ratio)
    ndcfg = _rescaled(entry.ndcfg_dilation, ratio)
    description = entry.label if ratio == 1 else f"{entry.label} scaled x{ratio:.3g}"
    if not dilation:
        description += ", every factor rounds to 1: nothing to re-dilate"
    return ResolvedPreset(entry.key, ratio, dilation, ndcfg, entry.tau, entry.ndcfg_tau if ndcfg else 0,
                          entry.progressive, entry.disperse, description)
