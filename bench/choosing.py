"""What each method and combination costs, for docs/choosing.md (issue 14): UNet calls, UNet work and time
against one plain pass at the target, at 1.5x, 2x and 4x the native side (2.25x, 4x and 16x the pixels).

Every row is planned by the job planner from its API dict, exactly as a WebUI job is, and run on the test
host's SD1.5-layout UNet (random weights) with an LDM VAE, one image with CFG, Euler, the direct entry
(hires fix off, the target typed as the size), its final decode included:

* `calls`, `work` (at 20 steps, counted at the UNet; a narrow UNet, since the counts do not depend on its
  width): UNet forward calls (each with cond and uncond rows, or a batch of windows), and UNet work in
  native-size evaluations: the sum over calls of rows x latent pixels, over 2 x the native latent's pixels
  (one CFG evaluation of a native-size latent = 1; a plain pass makes 20 x scale^2);
* `time` (at 10 steps): one thread's CPU time (`time.thread_time`) over the plain pass's at the same size,
  one run each, at SD1.5 widths (UNet 320, VAE 128), or with `--quick` at UNet width 64, VAE 32 (where
  the fixed cost of a model call weighs more, so methods of many small calls come out slower).

    python bench/choosing.py --quick --scales 1.5,2   # about 10 minutes on one CPU thread
    python bench/choosing.py --quick                  # 4x too: about an hour
    python bench/choosing.py                          # SD1.5 widths: hours on a CPU; minutes on a GPU

The native size is 128 px (latent 16) so that 4x fits a CPU; windows, tiles and stages scale with it as
they do from SD1.5's 512 px (1.5x: 192 px, the multiple of 64 nearest 1.5 x 128). The figures printed are
`FIGURE choosing_<row>_<scale>x_time_ratio`.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cascade import bench_models
from bench.common import figure
from lib_hires.job import PassSize, plan_job
from lib_hires.methods.base import CascadePlan
from lib_hires.params import GROUPS, validate_api_dict
from lib_hires.sampling.driver import Stage, run_stages
from tests.host.host import Job, Models, TestHost

ROWS: Mapping[str, dict[str, Any]] = {
    "Plain pass at the target": {"method": "none"},
    "ScaleCrafter": {"method": "scalecrafter"},
    "AP-LDM": {"method": "apldm"},
    "AP-LDM + ScaleCrafter in stages": {"method": "apldm", "stage_dilation_enabled": True},
    "DemoFusion": {"method": "demofusion"},
    "DemoFusion, FSTD local branch": {"method": "demofusion", "demofusion_local": "fstd"},
    "DemoFusion + attentive base": {"method": "demofusion", "attentive_base_enabled": True},
    "AccDiffusion": {"method": "accdiffusion"},
    "FreeScale": {"method": "freescale"},
    "FreeScale + attentive base": {"method": "freescale", "attentive_base_enabled": True},
    "FreeScale + ScaleCrafter in stages": {"method": "freescale", "freescale_dilation": False,
                                           "stage_dilation_enabled": True},
    "FSTD": {"method": "fstd"},
    "FSTD + attentive base": {"method": "fstd", "attentive_base_enabled": True},
    "MultiDiffusion": {"method": "multidiffusion"},
    "MultiDiffusion + attentive base": {"method": "multidiffusion", "attentive_base_enabled": True},
}
"""The rows of the table: a name and the API dict of the job."""


class Counter:
    """UNet calls and their work (rows x latent pixels) through a forward pre-hook."""

    def __init__(self, models: Models) -> None:
        self.calls, self.pixels = 0, 0
        self.handle = models.unet.register_forward_pre_hook(self._count)

    def _count(self, _module: Any, args: Any) -> None:
        x = args[0]
        self.calls += 1
        self.pixels += x.shape[0] * x.shape[-1] * x.shape[-2]

    def close(self) -> None:
        self.handle.remove()


def run(models: Models, data: dict[str, Any], side: int, steps: int, native: int) -> tuple[int, float, float] | None:
    """(calls, work, thread seconds) of one job at `side` x `side` px; None when the method does not apply."""
    settings = validate_api_dict(GROUPS, {"enabled": True, **data})
    plan = plan_job(settings, models.unet, native, PassSize("first", side, side, steps), None, seed=1)
    if data["method"] != "none" and not plan.runs:
        return None
    first = plan.passes.get("first")
    stages = first.stages if isinstance(first, CascadePlan) else [Stage((side // 8, side // 8), steps, plan=first)]
    host = TestHost(models, Job(width=side, height=side, steps=steps, seed=1), native_size=native)
    counter = Counter(models)
    start = time.thread_time()
    try:
        host.decode(run_stages(host, stages))
    finally:
        counter.close()
    seconds = time.thread_time() - start
    return counter.calls, counter.pixels / (2 * (native // 8) ** 2), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="time at small widths")
    parser.add_argument("--scales", default="1.5,2,4", help="target side / native side, comma-separated")
    args = parser.parse_args()
    width, vae_ch = (64, 32) if args.quick else (320, 128)
    native, count_steps, time_steps = 128, 20, 10
    torch.set_num_threads(1)
    counting, timing = bench_models(32, 32), bench_models(width, vae_ch)
    sides = {float(s): round(native * float(s) / 64) * 64 for s in args.scales.split(",")}
    table: dict[str, dict[float, tuple[int, float, float] | None]] = {name: {} for name in ROWS}
    for scale, side in sides.items():
        plain = 0.0
        for name, data in ROWS.items():
            counted = run(counting, data, side, count_steps, native)
            timed = run(timing, data, side, time_steps, native) if counted is not None else None
            if counted is None or timed is None:
                table[name][scale] = None
                print(f"  {name} at {side} px: not applied", flush=True)
                continue
            plain = plain or timed[2]
            table[name][scale] = (counted[0], counted[1], timed[2] / plain)
            key = name.lower().replace(" + ", "_").replace(", ", "_").replace(" ", "_").replace("-", "")
            figure(f"choosing_{key}_{scale:g}x_time_ratio", timed[2] / plain)
            print(f"  {name} at {side} px: {counted[0]} calls, work {counted[1]:.0f} ({count_steps} steps); "
                  f"{timed[2]:.1f} s ({time_steps} steps)", flush=True)
    header = " | ".join(f"{side}² calls | work | time" for side in sides.values())
    print(f"\n| method (direct entry) | {header} |")
    print("|---|" + "---:|---:|---:|" * len(sides))
    for name, by_scale in table.items():
        cells = " | ".join("not applied | | " if by_scale[scale] is None else
                           "{} | {:.0f} | {:.2f}".format(*by_scale[scale]) for scale in sides)  # type: ignore[str-format]
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
