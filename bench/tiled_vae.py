"""Tiled VAE vs untiled at SD VAE widths: error, PSNR, time ratio and peak-memory ratio (issue 4).

    python bench/tiled_vae.py --quick          # 128 and 192 px in 2x2 tiles, < 1 min on 2 CPU cores
    python bench/tiled_vae.py                  # 1024 and 2048 px, automatic tiles (long on a CPU)
    python bench/tiled_vae.py --sizes 1536 --device cuda

The models are the real LDM ``Decoder``/``Encoder`` at SD's widths (``ch=128, ch_mult=(1,2,4,4)``)
with random weights, fp32. The untiled baseline is ``decoder(z)`` / ``encoder(x)`` with the mid-block
attention run through ``torch.nn.functional.scaled_dot_product_attention``, as the WebUIs run it
(A1111's SDP optimisation, Forge); LDM's vanilla ``AttnBlock`` would materialise a 65536 x 65536
score matrix (32 GiB with its softmax) at 2048 px. On the CPU every measurement runs in its own
child process and its peak RSS is compared (the whole process: interpreter, weights, activations);
on CUDA the peak allocation, with the tiles parked on the CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, max_abs_error, measure_peak, psnr_db, timed  # noqa: E402
from lib_hires.vae import plan_decode, plan_encode, tiled_decode, tiled_encode  # noqa: E402
from tests.host.models import build_vae  # noqa: E402

SD_VAE_WIDTHS = {"ch": 128, "ch_mult": (1, 2, 4, 4)}
KINDS = ("decode", "encode")


class SdpaAttnBlock(nn.Module):
    """LDM ``AttnBlock`` (same ``norm``/``q``/``k``/``v``/``proj_out``) computed with torch SDPA
    (memory-efficient: no (HW x HW) score matrix)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.norm, self.q, self.k, self.v, self.proj_out = block.norm, block.q, block.k, block.v, block.proj_out

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        # contiguous (B, 1, HW, C): strided inputs make the CPU kernel fall back to a full score matrix
        q, k, v = (conv(h).flatten(2).transpose(1, 2)[:, None].contiguous() for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return x + self.proj_out(out.transpose(1, 2).reshape(x.shape))


def sd_vae(kind: str) -> nn.Module:
    decoder, encoder = build_vae(**SD_VAE_WIDTHS, seed=0)
    module = decoder if kind == "decode" else encoder
    module.mid.attn_1 = SdpaAttnBlock(module.mid.attn_1)
    return module


def bench_input(kind: str, size: int) -> Tensor:
    generator = torch.Generator().manual_seed(size)
    if kind == "decode":
        return torch.randn(1, 4, size // 8, size // 8, generator=generator)
    return torch.rand(1, 3, size, size, generator=generator) * 2 - 1


def run_once(kind: str, size: int, tile: int | None, device: str) -> tuple[Tensor, float]:
    """One decode/encode (tiled when ``tile`` is given, 0 meaning automatic): (output on CPU, seconds)."""
    module, x = sd_vae(kind).to(device), bench_input(kind, size).to(device)
    tiled = tiled_decode if kind == "decode" else tiled_encode
    offload = True if device == "cuda" else None
    with torch.no_grad():
        if tile is None:
            out, seconds = timed(lambda: module(x))
        else:
            out, seconds = timed(lambda: tiled(module, x, tile_size=tile or None, offload=offload))
    return out.cpu(), seconds


def layout(kind: str, size: int, tile: int | None) -> str:
    plan = (plan_decode if kind == "decode" else plan_encode)(sd_vae(kind), bench_input(kind, size),
                                                              tile_size=tile or None)
    rows, cols = plan.grid.shape
    return f"{rows}x{cols} tiles of {plan.tile_size} {'latent' if kind == 'decode' else 'image'} px"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 and 192 px, each in 2x2 tiles")
    parser.add_argument("--sizes", type=int, nargs="+", help="output sizes in px (multiples of 8)")
    parser.add_argument("--decode-tile", type=int, help="decoder tile in latent px (default: automatic)")
    parser.add_argument("--encode-tile", type=int, help="encoder tile in image px (default: automatic)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    sizes = args.sizes or ([128, 192] if args.quick else [1024, 2048])
    given = {"decode": args.decode_tile, "encode": args.encode_tile}
    half = {"decode": 16, "encode": 2}  # --quick: tiles of half the latent / image side (2x2 tiles)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for size in sizes:
        for kind in KINDS:
            tile = given[kind] or (size // half[kind] if args.quick else 0)
            ref = measure_peak(run_once, kind, size, None, args.device)
            out = measure_peak(run_once, kind, size, tile, args.device)
            (ref_tensor, ref_seconds), (out_tensor, out_seconds) = ref.value, out.value
            rows.append((kind, size, {
                "max_abs_err": max_abs_error(out_tensor, ref_tensor),
                "psnr_db": psnr_db(out_tensor, ref_tensor),
                "time_ratio": out_seconds / ref_seconds,
                "peak_mem_ratio": out.peak_bytes / ref.peak_bytes,
            }))
            print(f"{kind} {size}px ({layout(kind, size, tile)}): untiled {ref_seconds:.1f} s, "
                  f"{ref.peak_bytes / 2**20:.0f} MiB; tiled {out_seconds:.1f} s, "
                  f"{out.peak_bytes / 2**20:.0f} MiB", flush=True)
    for kind, size, figures in rows:
        for name, value in figures.items():
            figure(f"tiled_vae_{kind}_{size}px_{name}", value, "dB" if name == "psnr_db" else None)
    for kind, size, figures in rows:
        if size == max(sizes):
            for name, value in figures.items():
                figure(f"tiled_vae_{kind}_{name}", value, "dB" if name == "psnr_db" else None)


if __name__ == "__main__":
    main()
