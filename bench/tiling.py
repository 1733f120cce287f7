"""FSTD (implicit overlap) vs MultiDiffusion (explicit overlap): UNet evaluations and time for one
model call on a latent of 4T x 4T, tiles of T, MultiDiffusion's overlap T/2 (issue 10).

The real LDM UNet at SD1.5 channel widths (320 base channels, 768-wide context, random weights; 64
base channels with --quick) on a cond+uncond batch of 2, through `sampling.tiled.TiledEvaluation` with the windows each method uses
(FSTD at a shifted step, so its uncovered strip is filled too), 4 tiles per UNet call. Also FSTD with
one tile over the whole latent against the plain UNet call: the cost of the tiling machinery itself.

Times are one thread's CPU time (`torch.set_num_threads(1)`, `time.thread_time`), medians of rounds
that interleave the cases. Targets: evaluations ratio = ceil(4T/T)^2 / (int((4T - T)/(T/2) - 1e-6) + 2)^2
= 16/49; time ratio <= 1.1x the evaluations ratio; overhead ratio <= 1.03.

    python bench/tiling.py --quick      # T = 8 (latent 32x32), UNet width 64, under a minute on 2 CPU cores
    python bench/tiling.py              # T = 16 (latent 64x64, 512 px)
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, interleaved_cpu_times  # noqa: E402
from lib_hires.ops.windows import offset_grid, overlap_grid  # noqa: E402
from lib_hires.sampling.hooks import ModelCall, Rows  # noqa: E402
from lib_hires.sampling.steps import Step  # noqa: E402
from lib_hires.sampling.tiled import TiledEvaluation  # noqa: E402
from tests.host.models import SD1, build_unet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiles of 8 latent px and fewer rounds")
    parser.add_argument("--tile", type=int, help="tile side T in latent pixels, overriding the mode's")
    parser.add_argument("--rounds", type=int, help="measurement rounds, overriding the mode's")
    args = parser.parse_args()
    tile, rounds, width = (8, 3, 64) if args.quick else (16, 3, 320)
    tile, rounds = args.tile or tile, args.rounds or rounds
    side = 4 * tile
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = build_unet(SD1, model_channels=width, context_dim=768)
    x = torch.randn(2, 4, side, side)
    context = torch.randn(2, 77, 768)
    rows = Rows((0, 0), (False, True))
    sigma = torch.full((2,), 3.0)

    def base(c: ModelCall) -> torch.Tensor:
        return c.x - c.sigma.reshape(-1, 1, 1, 1) * unet(c.x, torch.full((c.x.shape[0],), 600.0), context=c.cond)

    def call_at(step: int) -> ModelCall:
        return ModelCall(x, sigma, context, rows, Step(step, 4), take_cond=lambda c, idx: c[list(idx)])

    def tiled(windows_for: Callable[..., list], weights: str) -> Callable[[], int]:
        def run() -> int:
            evaluation = TiledEvaluation(windows_for, weights, tile_batch=4)
            evaluation(call_at(0), base)  # the step before, for FSTD's uncovered strip
            before = evaluation.evaluations
            evaluation(call_at(1), base)
            return evaluation.evaluations - before
        return run

    shift = (tile // 2 - 1, tile // 3)
    cases: dict[str, Callable[[], object]] = {
        "fstd": tiled(lambda step, latent: offset_grid(*latent, tile, shift if step.index else (0, 0)), "gaussian"),
        "explicit": tiled(lambda step, latent: overlap_grid(*latent, tile, tile // 2), "uniform"),
        "one_tile": lambda: TiledEvaluation(lambda step, latent: offset_grid(*latent, side), "gaussian", 1)(
            call_at(0), base),
        "plain": lambda: base(call_at(0)),
    }
    measured = interleaved_cpu_times(cases, rounds)
    evaluations = measured.results
    median = {name: measured.median(name) for name in cases}
    fstd_evals, explicit_evals = int(evaluations["fstd"]), int(evaluations["explicit"])  # type: ignore[call-overload]
    # the step before the measured one ran too; both methods count one step's windows
    print(f"latent {side}x{side}, tiles {tile}, overlap {tile // 2}: FSTD {fstd_evals} tiles per step, "
          f"explicit {explicit_evals}; UNet width {width}, batch 2, {rounds} rounds, 1 thread")
    evals_ratio = fstd_evals / explicit_evals
    figure("fstd_vs_explicit_unet_evals_ratio", evals_ratio)
    # each case timed two calls (the step before and the measured one); the ratio is per call either way
    time_ratio = median["fstd"] / median["explicit"]
    figure("fstd_vs_explicit_time_ratio", time_ratio)
    figure("fstd_vs_explicit_time_over_evals", time_ratio / evals_ratio)
    figure("fstd_call_overhead_ratio", median["one_tile"] / median["plain"])


if __name__ == "__main__":
    main()
