"""Exact tiled VAE decode/encode with synchronised GroupNorm (issue 4; methods/tiled_vae.md §4).

Real LDM ``Decoder``/``Encoder`` at tiny widths with random weights (``tests/host/models.py``), fp32:
the tiled result must equal the untiled forward within 1e-4 for 1-tile, 2x2 and 3x5 layouts, sizes
that are not multiples of the tile and sizes smaller than one tile.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from lib_hires.vae import (GroupStats, NonFiniteError, TiledVAEInterrupted, UnsupportedVAE, plan_decode,
                           plan_encode, pooled_group_norm, tiled_decode, tiled_encode)
from lib_hires.vae.attention import chunked_attention
from lib_hires.vae.grid import HALO, Grid, exchange_halos, split_axis
from lib_hires.vae.network import compile_decoder, compile_encoder
from tests.host.models import build_vae, randomize_zero_and_norm_weights

TOLERANCE = 1e-4
MIN_PSNR_DB = 100.0


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors, hundreds of small ops: a second intra-op thread only adds wake-up latency
    (milliseconds per op on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae() -> tuple[nn.Module, nn.Module]:
    return build_vae(ch=32, ch_mult=(1, 2, 2, 4))


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def untiled(module: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return module(x)


def psnr_db(out: Tensor, ref: Tensor) -> float:
    """PSNR with the reference's value range as the peak."""
    mse = (out.double() - ref.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10((ref.max() - ref.min()).item() ** 2 / mse)


def state(module: nn.Module) -> dict[str, Tensor]:
    return {name: t.clone() for name, t in module.state_dict().items()}


# (batch, latent height, width, tile, expected layout): one tile larger than the latent; 2x2 and 3x5
# with sizes that are not multiples of the tile; 3x5 with 1-pixel cores (narrower than the halo).
DECODE_CASES = [(1, 6, 9, 16, (1, 1)), (2, 11, 9, 6, (2, 2)), (1, 21, 37, 8, (3, 5)), (1, 3, 5, 1, (3, 5))]


@pytest.mark.parametrize(("batch", "height", "width", "tile", "layout"), DECODE_CASES)
def test_tiled_decode_equals_untiled(vae, batch: int, height: int, width: int, tile: int,
                                     layout: tuple) -> None:
    decoder = vae[0]
    z = randn(batch, 4, height, width, seed=height)
    before = state(decoder)
    steps: list[tuple[int, int]] = []
    out = tiled_decode(decoder, z, tile_size=tile, progress=lambda done, total: steps.append((done, total)))
    ref = untiled(decoder, z)
    assert plan_decode(decoder, z, tile_size=tile).grid.shape == layout
    n_tiles = layout[0] * layout[1]
    assert steps[-1] == (n_tiles * len(compile_decoder(decoder).stages),) * 2  # the layout really ran
    assert out.shape == ref.shape == (batch, 3, 8 * height, 8 * width)
    assert (out - ref).abs().max().item() <= TOLERANCE
    assert psnr_db(out, ref) >= MIN_PSNR_DB
    assert all(torch.equal(before[k], v) for k, v in decoder.state_dict().items())  # modules untouched


# (batch, image height, width, tile, expected layout): sizes not multiples of 8 or of the tile.
ENCODE_CASES = [(1, 40, 56, 64, (1, 1)), (2, 48, 40, 24, (2, 2)), (2, 45, 77, 16, (3, 5))]


@pytest.mark.parametrize(("batch", "height", "width", "tile", "layout"), ENCODE_CASES)
def test_tiled_encode_equals_untiled(vae, batch: int, height: int, width: int, tile: int,
                                     layout: tuple) -> None:
    encoder = vae[1]
    x = randn(batch, 3, height, width, seed=height)
    steps: list[tuple[int, int]] = []
    out = tiled_encode(encoder, x, tile_size=tile, progress=lambda done, total: steps.append((done, total)))
    ref = untiled(encoder, x)
    assert plan_encode(encoder, x, tile_size=tile).grid.shape == layout
    assert steps[-1] == (layout[0] * layout[1] * len(compile_encoder(encoder).stages),) * 2
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= TOLERANCE
    assert psnr_db(out, ref) >= MIN_PSNR_DB


def test_attention_inside_levels_before_up_and_downsampling() -> None:
    """LDM VAEs built with ``attn_resolutions`` have an AttnBlock after every ResnetBlock of those
    levels, the last one right before ``upsample``/``downsample``: its whole window must be exact."""
    kwargs = dict(ch=32, out_ch=3, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=[32, 64],
                  in_channels=3, resolution=256, z_channels=4)
    with contextlib.redirect_stdout(io.StringIO()):
        decoder, encoder = Decoder(**kwargs), Encoder(double_z=True, **kwargs)
    for module, seed in ((decoder, 1), (encoder, 2)):
        randomize_zero_and_norm_weights(module, seed)
        module.eval()
    for level in (decoder.up[3], encoder.down[2]):  # attention blocks, then up/downsampling
        assert len(level.attn) == len(level.block) and hasattr(level, "upsample") != hasattr(level, "downsample")
    z, x = randn(1, 4, 7, 6, seed=7), randn(1, 3, 40, 48, seed=8)
    assert (tiled_decode(decoder, z, tile_size=3) - untiled(decoder, z)).abs().max().item() <= TOLERANCE
    assert (tiled_encode(encoder, x, tile_size=16) - untiled(encoder, x)).abs().max().item() <= TOLERANCE


def test_tanh_out_and_give_pre_end_match_the_forward(vae) -> None:
    z = randn(1, 4, 5, 6, seed=3)
    for flag in ("tanh_out", "give_pre_end"):
        decoder = copy.deepcopy(vae[0])
        setattr(decoder, flag, True)
        out, ref = tiled_decode(decoder, z, tile_size=3), untiled(decoder, z)
        assert out.shape == ref.shape and (out - ref).abs().max().item() <= TOLERANCE


def test_upcast_runs_a_bf16_model_in_fp32(vae) -> None:
    """The fp32 fallback: a bf16 VAE upcast per tile equals the same weights run in fp32 untiled."""
    decoder16 = copy.deepcopy(vae[0]).to(torch.bfloat16)
    z = randn(1, 4, 6, 7, seed=5)
    out = tiled_decode(decoder16, z.to(torch.bfloat16), tile_size=4, upcast=True)
    ref = untiled(copy.deepcopy(decoder16).float(), z.to(torch.bfloat16).float())
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= TOLERANCE
    assert next(decoder16.parameters()).dtype == torch.bfloat16


def test_bf16_model_without_upcast_stays_close(vae) -> None:
    """bf16 activations, fp32 statistics: close to the fp32 result at bf16's own precision."""
    decoder16 = copy.deepcopy(vae[0]).to(torch.bfloat16)
    z = randn(1, 4, 6, 7, seed=6)
    out = tiled_decode(decoder16, z.to(torch.bfloat16), tile_size=4)
    ref = untiled(vae[0], z)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().mean().item() <= 0.05 * ref.abs().mean().item()


@pytest.mark.parametrize("splits", [((0, 8), (0, 12)), ((0, 3, 8), (0, 12)), ((0, 1, 5, 8), (0, 7, 9, 12))])
def test_pooled_group_norm_equals_group_norm(splits: tuple) -> None:
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16, eps=1e-6)
    nn.init.normal_(norm.weight, 1.0, 0.3)
    nn.init.normal_(norm.bias, 0.0, 0.3)
    x = randn(3, 16, 8, 12) * 2 + 0.5 * randn(3, 16, 1, 1, seed=1)  # per-channel offsets
    rows, cols = splits
    parts = [x[:, :, r0:r1, c0:c1] for r0, r1 in zip(rows, rows[1:]) for c0, c1 in zip(cols, cols[1:])]
    normed = pooled_group_norm(parts, norm)
    n_cols = len(cols) - 1
    whole = torch.cat([torch.cat(normed[i:i + n_cols], dim=3) for i in range(0, len(normed), n_cols)], dim=2)
    assert (whole - norm(x)).abs().max().item() <= 1e-5


def test_pooled_group_norm_counts_only_cores_of_overlapping_windows() -> None:
    norm = nn.GroupNorm(2, 4, eps=1e-6)
    x = randn(2, 4, 9, 10, seed=2)
    grid = Grid.split(9, 10, 4)
    windows = [x[(..., *grid.window(r, c).slices)] for r, c in grid.tiles()]
    cores = [grid.core_in_window(r, c) for r, c in grid.tiles()]
    normed = pooled_group_norm(windows, norm, cores)
    ref = norm(x)
    for (r, c), part in zip(grid.tiles(), normed):
        assert (part - ref[(..., *grid.window(r, c).slices)]).abs().max().item() <= 1e-5
    # Counting the overlapping windows whole would weight the overlaps twice: a different result.
    doubled = pooled_group_norm(windows, norm)
    assert (doubled[0] - ref[(..., *grid.window(0, 0).slices)]).abs().max().item() > 1e-4


def test_group_stats_accumulate_in_fp32_for_bf16_input() -> None:
    """bf16 values with a large common offset: the pooled mean/variance must be those of the exact
    values (fp32 accumulation over a stable merge), not bf16-rounded sums."""
    x = (100 + randn(2, 8, 64, 64, seed=3)).to(torch.bfloat16)
    stats = GroupStats.of(x[..., :40], 4).merge(GroupStats.of(x[..., 40:], 4))
    exact = x.double().unflatten(1, (4, -1))
    assert stats.mean.dtype == stats.m2.dtype == torch.float32
    assert torch.allclose(stats.mean.double(), exact.mean(dim=(2, 3, 4)), rtol=0, atol=1e-4)
    assert torch.allclose(stats.variance.double(), exact.var(dim=(2, 3, 4), correction=0), rtol=1e-4)


def test_chunked_attention_equals_softmax_attention() -> None:
    q, k, v = randn(2, 50, 8, seed=1) * 3, randn(2, 70, 8, seed=2) * 3, randn(2, 70, 8, seed=3)
    ref = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=2) @ v
    for score_elements, key_chunk in ((1 << 20, 1 << 20), (64, 16), (7, 3)):  # 1 chunk ... many chunks
        out = chunked_attention(q, k, v, score_elements=score_elements, key_chunk=key_chunk)
        assert (out - ref).abs().max().item() <= 1e-5


def test_split_axis_partitions_with_aligned_cores() -> None:
    for length, tile, align in ((37, 8, 1), (7, 2, 1), (77, 16, 8), (17, 8, 8), (5, 64, 8)):
        bounds = split_axis(length, tile, align)
        assert bounds[0] == 0 and bounds[-1] == length
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        assert all(size >= min(align, length) for size in sizes)
        assert all(b % align == 0 for b in bounds[:-1])
        assert max(sizes) <= max(tile, align) + align


def test_halo_exchange_restores_every_window_from_the_cores() -> None:
    x = randn(1, 3, 11, 13, seed=4)
    grid = Grid.split(11, 13, 3)
    windows = [x[(..., *grid.window(r, c).slices)].clone() for r, c in grid.tiles()]
    for (r, c), window in zip(grid.tiles(), windows):  # spoil every halo, keep the cores
        core = window[(..., *grid.core_in_window(r, c))].clone()
        window.fill_(float("nan"))
        window[(..., *grid.core_in_window(r, c))] = core
    exchange_halos(grid, windows)
    for (r, c), window in zip(grid.tiles(), windows):
        assert torch.equal(window, x[(..., *grid.window(r, c).slices)])
    assert grid.halo == HALO


def test_progress_reports_every_tile_and_interrupt_stops_between_tiles(vae) -> None:
    decoder = vae[0]
    z = randn(1, 4, 4, 4)
    steps: list[tuple[int, int]] = []
    tiled_decode(decoder, z, tile_size=2, progress=lambda done, total: steps.append((done, total)))
    total = 4 * len(compile_decoder(decoder).stages)
    assert steps == [(i, total) for i in range(1, total + 1)]

    polls: list[int] = []

    def interrupt_on_tenth_poll() -> bool:
        polls.append(1)
        return len(polls) == 10

    seen: list[int] = []
    with pytest.raises(TiledVAEInterrupted):
        tiled_decode(decoder, z, tile_size=2, progress=lambda done, total: seen.append(done),
                     should_interrupt=interrupt_on_tenth_poll)
    assert seen == list(range(1, 10))  # stopped before the 10th tile step, after 9 complete ones


def test_nan_input_raises_a_clear_error(vae) -> None:
    z = randn(1, 4, 4, 4)
    z[0, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="upcast=True"):
        tiled_decode(vae[0], z, tile_size=2)
    x = randn(1, 3, 32, 32)
    x[0, 1, 5, 7] = float("inf")
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        tiled_encode(vae[1], x, tile_size=16)


def test_automatic_tile_size_is_used_when_none_is_given(vae) -> None:
    z = randn(1, 4, 4, 6)
    plan = plan_decode(vae[0], z)
    assert plan.tile_size >= 16 and plan.tile_size % 8 == 0 and not plan.offload
    assert plan_encode(vae[1], randn(1, 3, 64, 64)).tile_size % 8 == 0
    assert (tiled_decode(vae[0], z) - untiled(vae[0], z)).abs().max().item() <= TOLERANCE


def test_a_module_without_the_ldm_layout_is_rejected_by_name() -> None:
    with pytest.raises(UnsupportedVAE, match="decoder .* has no conv_in, mid, up"):
        tiled_decode(nn.Conv2d(4, 3, 1), randn(1, 4, 4, 4))
