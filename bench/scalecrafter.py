"""ScaleCrafter's cost per model call, as ratios to the plain UNet at the same latent size.

The real LDM UNet at SD1.5 channel widths (320 base channels, 768-wide context, random weights),
evaluated on a cond+uncond batch of 2 as the WebUIs do:

* integer dilation: the SD1.5 1024x1024 code preset (DB1-UB2 at 2) through ScaleCrafter's call hook;
* fractional dilation: the SD1.5 1280x1280 code preset (factor 2.5: dilation 3 on a 1.2x resized map);
* ND-CFG: the SD1.5 2048x2048 code preset at its first step (factors 2/3/4 and the noise-damped
  pass on the uncond row), per denoiser call.

Times are the CPU time of one thread (`torch.set_num_threads(1)`, `time.thread_time`), so other work
on the machine does not change them; rounds interleave the four measurements and medians are
reported. Targets (issue 3): <= 1.05, <= 1.25, <= 1.55.

    python bench/scalecrafter.py --quick      # 16x16 latent, under a minute on 2 CPU cores
    python bench/scalecrafter.py              # 64x64 latent (512 px): compute-bound, ~15 min
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, interleaved_cpu_times  # noqa: E402
from lib_hires.methods.scalecrafter import ScaleCrafterPass, bind  # noqa: E402
from lib_hires.methods.scalecrafter import resolve  # noqa: E402
from lib_hires.params import ScaleCrafterParams  # noqa: E402
from lib_hires.patching import PatchScope  # noqa: E402
from lib_hires.sampling.hooks import ModelCall, Rows  # noqa: E402
from lib_hires.sampling.steps import Step  # noqa: E402
from lib_hires.unet import ModelFamily, map_unet  # noqa: E402
from tests.host.models import SD1, build_unet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16x16 latent and fewer rounds")
    parser.add_argument("--size", type=int, help="latent side (a multiple of 8), overriding the mode's")
    parser.add_argument("--rounds", type=int, help="measurement rounds, overriding the mode's")
    args = parser.parse_args()
    size, rounds = (16, 3) if args.quick else (64, 3)
    size, rounds = args.size or size, args.rounds or rounds
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = build_unet(SD1, model_channels=320, context_dim=768)
    unet_map = map_unet(unet)
    x = torch.randn(2, 4, size, size)
    t = torch.full((2,), 800.0)
    context = torch.randn(2, 77, 768)
    call = ModelCall(x, t, context, Rows((0, 0), (False, True)), Step(0, 50),
                     take_cond=lambda c, idx: c[list(idx)])

    def base(c: ModelCall) -> torch.Tensor:
        return unet(c.x, c.sigma, context=c.cond)

    def hooked(preset: str) -> Callable[[], torch.Tensor]:
        pixels = {"sd15_1024x1024_code": 1024, "sd15_1280x1280_code": 1280, "sd15_2048x2048_code": 2048}[preset]
        resolution = resolve(ScaleCrafterParams(preset=preset), frozenset(), ModelFamily.SD1, 512, pixels, pixels)
        plan = bind(resolution, unet_map, (pixels // 8, pixels // 8))  # checked for the preset's size

        def run() -> torch.Tensor:
            with PatchScope() as scope:
                return ScaleCrafterPass(plan, unet, scope, warn=print).call_hook(call, base)

        return run

    cases = {"plain": lambda: base(call), "int": hooked("sd15_1024x1024_code"),
             "frac": hooked("sd15_1280x1280_code"), "ndcfg": hooked("sd15_2048x2048_code")}
    measured = interleaved_cpu_times(cases, rounds)
    plain = measured.median("plain")
    print(f"latent {size}x{size}, batch 2, {rounds} rounds, 1 thread; median plain UNet call {plain:.3f} s CPU")
    figure("scalecrafter_int_dilation_call_ratio", measured.median("int") / plain)
    figure("scalecrafter_frac_dilation_call_ratio", measured.median("frac") / plain)
    figure("scalecrafter_ndcfg_call_ratio", measured.median("ndcfg") / plain)


if __name__ == "__main__":
    main()
