"""FreeScale's cost (issue 13): one scale-fusion self-attention against the plain one, and the whole pipeline
against one plain pass at the target size.

* `freescale_attn_call_ratio`: one self-attention layer call with scale fusion (3x3 jittered windows of
  the native token grid in one batch, the global attention, the Gaussian low-pass over (h, w, C)) over
  the plain call, at 2x the native token grid per side: SD1.5's first level (320 channels, 8 heads;
  native 64x64 tokens, so 128x128 = 16384; --quick: native 32x32, 4096 tokens), batch 2 (CFG). The
  attention is `scaled_dot_product_attention` with LDM's projections, as A1111's default SDP
  optimisation and Forge run it. Target <= 1.7: the attention arithmetic alone is 9 windows of a quarter
  of the tokens, 9/16, plus the global 1 = 1.5625; the windows' projections (2.25x the tokens) and the
  low-pass come on top.
* `freescale_pipeline_cost_ratio`: FreeScale's direct entry (base stage at the native pixel count over T
  steps, decode, bicubic, encode, one upscaling stage from int(0.3 T) with restrained dilation and scale
  fusion, final decode) over one plain T-step pass at the target size with its decode, on the test
  host's LDM UNet (SD1.5 block layout, random weights), native 128 px, target 256 px, Euler, CFG.

Times are one thread's CPU time (`torch.set_num_threads(1)`, `time.thread_time`), medians of rounds that
interleave the cases.

    python bench/freescale.py --quick   # small widths: about a minute
    python bench/freescale.py           # SD1.5 widths (UNet 320, VAE 128), 10 steps; attention at 16384 tokens
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cascade import bench_models, cascade_run, plain_run
from bench.common import figure, interleaved_cpu_times
from lib_hires.job import PassSize, plan_job
from lib_hires.ops.scale_fusion import ScaleFusion
from lib_hires.params import GROUPS, validate_api_dict
from tests.host.host import Job


class SdpAttention(nn.Module):
    """LDM's self-attention layer (to_q, to_k, to_v, to_out) computed with `scaled_dot_product_attention`."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b = x.shape[0]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).reshape(b, x.shape[1], -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small widths and sizes, fewer steps")
    parser.add_argument("--rounds", type=int, help="measurement rounds, overriding the mode's")
    args = parser.parse_args()
    width, vae_ch, steps, native_tokens = (64, 32, 6, 32) if args.quick else (320, 128, 10, 64)
    rounds = args.rounds or 3
    torch.set_num_threads(1)

    attention = SdpAttention(320, 8)
    grid = 2 * native_tokens
    tokens = torch.randn(2, grid * grid, 320)
    fusion = ScaleFusion((grid, grid), (2, 2), native_tokens)

    def attend(q: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        return attention(q, ctx)

    def plain_attention() -> None:
        attention(tokens)

    def fused_attention() -> None:
        fusion(attend, tokens, 8, random.Random(0))

    native = 128
    models = bench_models(width, vae_ch)
    target = 2 * native
    job = Job(width=target, height=target, steps=steps)
    settings = validate_api_dict(GROUPS, {"enabled": True, "method": "freescale"})
    cascade = plan_job(settings, models.unet, native, PassSize("first", target, target, steps), None,
                       seed=1).cascade("first")
    assert cascade is not None and len(cascade.stages) == 2
    measured = interleaved_cpu_times({"plain_attention": plain_attention, "fused_attention": fused_attention,
                                      "freescale": cascade_run(models, job, native, cascade),
                                      "plain_target": plain_run(models, job, native)}, rounds)
    stages = ", ".join(f"{s.size[1] * 8}x{s.size[0] * 8} x{s.runs} steps" for s in cascade.stages)
    print(f"attention: {grid}x{grid} tokens (native {native_tokens}x{native_tokens}), 320 channels, 8 heads, batch 2; "
          f"pipeline: native {native} px, target {target} px, {steps} steps, stages {stages}, UNet width {width}, "
          f"VAE width {vae_ch}; {rounds} rounds, 1 thread")
    figure("freescale_attn_call_ratio", measured.median("fused_attention") / measured.median("plain_attention"))
    figure("freescale_pipeline_cost_ratio", measured.median("freescale") / measured.median("plain_target"))


if __name__ == "__main__":
    main()
