"""Cascades on the test host (issues 11, 12): what AP-LDM costs against one plain pass at the target size
and against DemoFusion, what PFSA costs per step, what the stage engine itself adds, how many UNet
evaluations a DemoFusion step makes and what AccDiffusion's masks and patch prompts add.

The test host's real LDM UNet (SD1.5 block layout, random weights) and LDM VAE, one image with CFG
(cond + uncond in one call), Euler. The target has 4x the native pixel count (2x per side).

* `apldm_pipeline_cost_ratio`: AP-LDM's whole pipeline (base stage at the native pixel count with
  attentive guidance over T steps, VAE decode, pixel resize, encode, one refinement stage from
  int(0.8 T)) over one plain T-step pass at the target size (and its decode in both).
* `pfsa_step_overhead_ratio`: one PFSA guidance step over one UNet call (batch 2) on SD1.5's native
  latent (64x64; 16x16 with --quick); target <= 0.03. PFSA grows with the square of the latent's
  pixel count, the UNet about linearly, so this is measured at the real native size.
* `cascade_engine_overhead_ratio`: a one-stage cascade through `run_stages` (hooked sampler, no hooks)
  over the same sampler called directly, as the WebUI's plain pass does; target <= 1.02.
* `demofusion_unet_evals_per_step`: window and sub-lattice evaluations per step of DemoFusion's phase 2
  (counted at the UNet: rows / 2 for CFG); equals the formula, 3x3 windows + 2^2 sub-lattices = 13.
* `apldm_vs_demofusion_time_ratio`: AP-LDM's pipeline over DemoFusion's (both with their final decode),
  same steps per stage; target <= 0.2 (the AP-LDM paper reports about 0.2 on a GPU).
* `accdiffusion_vs_demofusion_time_ratio`: AccDiffusion (attention recorded in phase 1, masks, patch
  prompts encoded once per phase, window interaction) over DemoFusion; target <= 1.1.

Times are one thread's CPU time (`torch.set_num_threads(1)`, `time.thread_time`), medians of rounds
that interleave the cases.

    python bench/cascade.py --quick     # UNet width 64, native 128 px, 6 steps: about a minute on 2 cores
    python bench/cascade.py             # SD1.5 widths (UNet 320, VAE 128), native 128 px, 10 steps; PFSA at
                                        # 64x64: about 15 minutes on one CPU thread
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, interleaved_cpu_times
from lib_hires.job import PassSize, plan_job
from lib_hires.methods.base import CascadePlan
from lib_hires.ops.attentive_guidance import guide
from lib_hires.params import GROUPS, validate_api_dict
from lib_hires.sampling.driver import Stage, run_stages
from tests.host.host import Job, Models, TestHost, build_models
from tests.host.models import build_vae


def bench_models(width: int, vae_ch: int) -> Models:
    """The test host's SD1.5-layout UNet at `width` channels with an LDM VAE of `vae_ch` channels."""
    small = build_models("sd1", model_channels=width)
    decoder, encoder = build_vae(ch=vae_ch, ch_mult=(1, 2, 4, 4))
    return Models(small.family, small.unet, small.text, decoder, encoder)


def cascade_run(models: Models, job: Job, native: int, cascade: CascadePlan) -> Callable[[], None]:
    """One direct-entry job through the stage driver, with its final decode."""
    def run() -> None:
        host = TestHost(models, job, native_size=native)
        host.decode(run_stages(host, cascade.stages))
    return run


def plain_run(models: Models, job: Job, native: int) -> Callable[[], None]:
    """One plain pass at the job's size with its decode."""
    def run() -> None:
        host = TestHost(models, job, native_size=native)
        sigmas = host.sigmas(job.steps)
        host.decode(host.sample_plain(host.noise((1, 4, job.height // 8, job.width // 8), 0) * sigmas[0], sigmas, 0))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small widths and sizes, fewer steps")
    parser.add_argument("--rounds", type=int, help="measurement rounds, overriding the mode's")
    args = parser.parse_args()
    width, vae_ch, native, steps, rounds = (64, 32, 128, 6, 3) if args.quick else (320, 128, 128, 10, 3)
    pfsa_latent = 16 if args.quick else 64
    rounds = args.rounds or rounds
    torch.set_num_threads(1)
    models = bench_models(width, vae_ch)
    target = 2 * native
    job = Job(width=target, height=target, steps=steps)
    settings = validate_api_dict(GROUPS, {"enabled": True, "method": "apldm"})
    plan = plan_job(settings, models.unet, native, PassSize("first", target, target, steps), None)
    cascade = plan.cascade("first")
    assert cascade is not None and cascade.stages[0].size == (native // 8,) * 2
    apldm, plain_target = cascade_run(models, job, native, cascade), plain_run(models, job, native)

    base = cascade.stages[0].size
    x_base = torch.randn(1, 4, pfsa_latent, pfsa_latent)
    x_batch = torch.randn(2, 4, pfsa_latent, pfsa_latent)
    context = torch.randn(2, 77, 32)

    def pfsa_step() -> None:
        guide(x_base, 0.004)

    def unet_call() -> None:
        models.unet(x_batch, torch.full((2,), 500.0), context=context)

    def engine() -> None:
        host = TestHost(models, job, native_size=native)
        run_stages(host, [Stage(base, steps)])

    def direct() -> None:
        host = TestHost(models, job, native_size=native)
        sigmas = host.sigmas(steps)
        host.sample_plain(host.noise((1, 4, *base), 0) * sigmas[0], sigmas, 0)

    fusion = {name: plan_job(validate_api_dict(GROUPS, {"enabled": True, "method": name}), models.unet, native,
                             PassSize("first", target, target, steps), None, seed=1).cascade("first")
              for name in ("demofusion", "accdiffusion")}

    def fused(name: str) -> Callable[[], None]:
        cascade = fusion[name]
        assert cascade is not None
        return cascade_run(models, job, native, cascade)

    cases: dict[str, Callable[[], None]] = {"apldm": apldm, "plain_target": plain_target, "pfsa": pfsa_step,
                                            "unet_call": unet_call, "engine": engine, "direct": direct,
                                            "demofusion": fused("demofusion"), "accdiffusion": fused("accdiffusion")}
    measured = interleaved_cpu_times(cases, rounds)
    median = {name: measured.median(name) for name in cases}
    stages = ", ".join(f"{s.size[1] * 8}x{s.size[0] * 8} x{s.runs} steps" for s in cascade.stages)
    print(f"native {native} px, target {target} px, {steps} steps; AP-LDM stages: {stages}; UNet width {width}, "
          f"VAE width {vae_ch}; PFSA vs UNet call at {pfsa_latent}x{pfsa_latent}; {rounds} rounds, 1 thread")
    figure("apldm_pipeline_cost_ratio", median["apldm"] / median["plain_target"])
    figure("pfsa_step_overhead_ratio", median["pfsa"] / median["unet_call"])
    figure("cascade_engine_overhead_ratio", median["engine"] / median["direct"])
    figure("demofusion_unet_evals_per_step", demofusion_evaluations(models, job, native, fusion["demofusion"]))
    figure("apldm_vs_demofusion_time_ratio", median["apldm"] / median["demofusion"])
    figure("accdiffusion_vs_demofusion_time_ratio", median["accdiffusion"] / median["demofusion"])


def demofusion_evaluations(models: Models, job: Job, native: int, cascade: CascadePlan | None) -> float:
    """Window and sub-lattice evaluations per step of the last phase, counted at the UNet (CFG: 2 rows)."""
    assert cascade is not None
    rows: list[int] = []
    handle = models.unet.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    try:
        run_stages(TestHost(models, job, native_size=native), cascade.stages)
    finally:
        handle.remove()
    assert len(cascade.stages) == 2, "the target is twice the native side: phase 1, then phase 2"
    first, last = cascade.stages
    in_last = sum(rows[first.runs:])  # phase 1 makes one call (2 rows) per step
    return in_last / 2 / last.runs


if __name__ == "__main__":
    main()
