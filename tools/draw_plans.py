"""Draw every method's stages and windows as SVG, from the plan objects the job planner makes (docs/choosing.md).

    python tools/draw_plans.py            # writes docs/images/plans/<name>.svg

Each drawing is one direct-entry job on SD1.5 (native 512 px) planned by `job.plan_job` from the same
API dict a user would send, on the test host's SD1.5-layout UNet (only its layout matters: nothing is
sampled). Every stage is a square to scale (left to right), with what its plan runs: the windows or
tiles of its first step (FSTD: the first two steps, unshifted then shifted), DemoFusion's sub-lattice
count, FreeScale's attention windows at the top attention level, ScaleCrafter's re-dilated steps, AP-LDM's
guided steps. A test regenerates the drawings and compares them with the committed files, so they never
drift from the code.
"""
from __future__ import annotations

import html
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_hires.job import PassSize, plan_job
from lib_hires.methods.accdiffusion import CapturePlan
from lib_hires.methods.apldm import StagePlan
from lib_hires.methods.base import CascadePlan
from lib_hires.methods.combine import Joined, JoinedStage
from lib_hires.methods.demofusion import Phase
from lib_hires.methods.freescale import Upscaling
from lib_hires.methods.scalecrafter import Plan
from lib_hires.ops.attentive_guidance import guided_steps
from lib_hires.ops.scale_fusion import token_windows
from lib_hires.ops.windows import Window, offset_grid, overlap_grid
from lib_hires.params import GROUPS, validate_api_dict
from lib_hires.sampling.driver import Stage
from lib_hires.sampling.steps import Step, steps_for_fraction
from lib_hires.sampling.tiled import TiledPlan

NATIVE = 512
STEPS = 50
DRAWINGS: Mapping[str, tuple[int, dict[str, Any]]] = {
    "scalecrafter": (2048, {"method": "scalecrafter"}),
    "apldm": (2048, {"method": "apldm"}),
    "apldm_scalecrafter_in_stages": (2048, {"method": "apldm", "stage_dilation_enabled": True, "apldm_refine": "0.4 0.4"}),
    "demofusion": (2048, {"method": "demofusion"}),
    "demofusion_attentive_base": (2048, {"method": "demofusion", "attentive_base_enabled": True}),
    "freescale": (2048, {"method": "freescale"}),
    "freescale_scalecrafter_in_stages": (2048, {"method": "freescale", "freescale_dilation": False,
                                                "stage_dilation_enabled": True}),
    "fstd": (2048, {"method": "fstd"}),
    "fstd_attentive_base": (2048, {"method": "fstd", "attentive_base_enabled": True}),
    "multidiffusion": (2048, {"method": "multidiffusion"}),
}
"""The drawings: file name -> (target side in px, the job's API dict)."""
OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "plans"
SCALE = 0.1  # drawing px per image px
GAP, TOP, TEXT_LINE = 40, 30, 15
CHAR = 6.2  # the width of a character of the 11 px text, about
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


@dataclass(frozen=True)
class Panel:
    """One stage as drawn: its size in px, the steps it runs, the windows drawn on it (latent px, per set
    a colour and dash), and the lines of text under it."""

    size: tuple[int, int]  # (width, height) px
    windows: tuple[tuple[tuple[Window, ...], str, bool], ...]
    text: tuple[str, ...]


def parts(plan: Any) -> Iterator[Any]:
    """The plans a stage runs, joined ones unpacked."""
    if isinstance(plan, (Joined, JoinedStage)):
        for part in plan.parts:
            yield from parts(part)
    elif plan is not None:
        yield plan


def describe_part(part: Any, stage: Stage, latent: tuple[int, int]) -> tuple[list[str], list[tuple[tuple[Window, ...], str, bool]]]:
    """What a part of a stage's plan does, in words, and the windows it draws."""
    if isinstance(part, StagePlan) and part.guidance is not None and part.guidance.gamma > 0:
        guided = guided_steps(stage.steps, part.guidance.delay, part.guidance.end)
        return [f"attentive guidance, steps {guided.start + 1}-{guided.stop}"], []
    if isinstance(part, Plan):
        res = part.resolution
        return [f"ScaleCrafter: {len(part.convs)} convs re-dilated, first "
                f"{steps_for_fraction(res.tau, stage.runs)} of {stage.runs} steps"], []
    if isinstance(part, TiledPlan):
        first = tuple(part.windows_for(Step(0, stage.runs), latent))
        second = tuple(part.windows_for(Step(1, stage.runs), latent))
        sets = [(first, COLOURS[0], False)] + ([(second, COLOURS[1], True)] if second != first else [])
        text = f"{len(first)} tiles / step" + (" (step 2 shifted, dashed)" if second != first else "")
        return [text], sets
    if isinstance(part, Phase):
        fusion = part.fusion
        fstd = fusion.local == "fstd"
        windows = tuple(offset_grid(*latent, fusion.window) if fstd else overlap_grid(*latent, fusion.window,
                                                                                      fusion.stride))
        kind = "FSTD tiles (shifted per step)" if fstd else "windows (jittered)"
        return [f"{len(windows)} {kind} + {part.number ** 2} sub-lattices / step", "skip residual"], [
            (windows, COLOURS[0], False)]
    if isinstance(part, Upscaling):
        text = [f"detail control {part.detail.alpha:g}"]
        sets: list[tuple[tuple[Window, ...], str, bool]] = []
        if part.fusion is not None:
            tokens = token_windows(latent, latent, part.fusion.scale, part.fusion.native_latent)
            sets.append((tuple(overlap_grid(*latent, tokens.size, tokens.stride)), COLOURS[2], False))
            text.append(f"scale fusion: {len(sets[0][0])} attention windows")
        if part.dilation is not None:
            res = part.dilation.resolution
            text.append(f"restrained dilation, first {steps_for_fraction(res.tau, stage.runs)} of {stage.runs} steps")
        return text, sets
    if isinstance(part, CapturePlan):
        return ["records cross-attention"], []
    return [], []


def panels(side: int, data: dict[str, Any], unet: Any) -> list[Panel]:
    """One panel per stage of a job at `side` x `side` px."""
    settings = validate_api_dict(GROUPS, {"enabled": True, **data})
    plan = plan_job(settings, unet, NATIVE, PassSize("first", side, side, STEPS), None, seed=1)
    first = plan.passes.get("first")
    stages = first.stages if isinstance(first, CascadePlan) else (Stage((side // 8, side // 8), STEPS, plan=first),)
    out = []
    for index, stage in enumerate(stages):
        latent = stage.size
        text = [f"{latent[1] * 8}x{latent[0] * 8}, steps {stage.start + 1}-{stage.steps} of {stage.steps}"]
        if index:
            text.append("from the previous stage: " + ("pixel-space resize" if stage.upscale == "rgb" else
                                                        "latent resize"))
        windows: list[tuple[tuple[Window, ...], str, bool]] = []
        for part in parts(stage.plan):
            words, sets = describe_part(part, stage, latent)
            text += words
            windows += sets
        out.append(Panel((latent[1] * 8, latent[0] * 8), tuple(windows), tuple(text)))
    return out


def svg(title: str, stages: Sequence[Panel]) -> str:
    """The drawing: the stages left to right, bottoms aligned, text under each."""
    widths = [max(p.size[0] * SCALE, CHAR * max(len(line) for line in p.text)) for p in stages]
    tallest = max(p.size[1] for p in stages) * SCALE
    text_rows = max(len(p.text) for p in stages)
    width = int(max(sum(widths) + GAP * (len(stages) + 1), 2 * GAP + 7.5 * len(title)))
    height = int(TOP + tallest + 20 + TEXT_LINE * text_rows + 10)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{GAP}" y="18" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    x = GAP
    for index, (panel, slot) in enumerate(zip(stages, widths)):
        w, h = panel.size[0] * SCALE, panel.size[1] * SCALE
        y = TOP + tallest - h
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="#f2f2f2" stroke="#333"/>')
        for windows, colour, dashed in panel.windows:
            dash = ' stroke-dasharray="4 3"' if dashed else ""
            tops, lefts = sorted({w.top for w in windows}), sorted({w.left for w in windows})
            for window in windows:  # overlapping windows: every other one inset, so that each shows
                inset = 1 + 2.5 * ((tops.index(window.top) + lefts.index(window.left)) % 2)
                out.append(f'<rect x="{x + window.left * 8 * SCALE + inset:.1f}" '
                           f'y="{y + window.top * 8 * SCALE + inset:.1f}" '
                           f'width="{window.width * 8 * SCALE - 2 * inset:.1f}" '
                           f'height="{window.height * 8 * SCALE - 2 * inset:.1f}" '
                           f'fill="none" stroke="{colour}" stroke-opacity="0.8"{dash}/>')
        for row, line in enumerate(panel.text):
            weight = ' font-weight="bold"' if row == 0 else ""
            out.append(f'<text x="{x:.1f}" y="{TOP + tallest + 16 + row * TEXT_LINE:.1f}"{weight}>'
                       f'{html.escape(line)}</text>')
        if index + 1 < len(stages):
            ax = x + slot + 6
            ay = TOP + tallest - min(h, 40) / 2
            out.append(f'<path d="M{ax:.1f},{ay:.1f} h{GAP - 12} m-6,-4 l6,4 l-6,4" fill="none" stroke="#333"/>')
        x += slot + GAP
    out.append("</svg>")
    return "\n".join(out) + "\n"


def drawings(unet: Any) -> dict[str, str]:
    """Every drawing's SVG text by file name."""
    result = {}
    for name, (side, data) in DRAWINGS.items():
        title = f"{name.replace('_', ' ')}: SD1.5, {side}x{side}, {STEPS} steps"
        result[f"{name}.svg"] = svg(title, panels(side, data, unet))
    return result


def layout_unet() -> Any:
    """An SD1.5-layout UNet (narrow: only its block layout is read)."""
    from tests.host.host import build_models

    return build_models("sd1", model_channels=32).unet


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in drawings(layout_unet()).items():
        (OUT / name).write_text(text)
        print(OUT / name)


if __name__ == "__main__":
    main()
