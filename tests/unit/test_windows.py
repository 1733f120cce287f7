"""Window machinery: grids cover every pixel, weights blend to 1, FSTD's offsets, jitter, per-window
conditioning (SDXL crop coordinates)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from lib_hires.ops.conditioning import CROP_SLICE, embed_numbers, window_cond, with_crop
from lib_hires.ops.windows import (
    Window, blend_sum, fstd_offsets, gaussian_weights, jitter, offset_grid, overlap_grid, window_weights,
)

SIZES = [(16, 16), (40, 24), (64, 130), (7, 100), (128, 128), (129, 65)]


@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("size, stride", [(16, 8), (32, 16), (32, 24), (64, 32), (24, 5)])
@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_overlap_grid_weights_sum_to_one_everywhere(height: int, width: int, size: int, stride: int, kind: str) -> None:
    windows = overlap_grid(height, width, size, stride)
    total = blend_sum(windows, height, width, kind)
    assert (total > 0).all(), "every latent pixel is covered"
    shares = torch.zeros(height, width, dtype=torch.float64)
    for w in windows:
        assert 0 <= w.top and w.top + w.height <= height and 0 <= w.left and w.left + w.width <= width
        shares[w.slices] += window_weights(w, kind) / total[w.slices]
    assert torch.allclose(shares, torch.ones_like(shares), atol=1e-12)


def test_overlap_grid_follows_demofusion() -> None:
    """DemoFusion §3.1: int((h - S)/stride - 1e-6) + 2 views per axis, the last one ending at the border."""
    assert [w.top for w in overlap_grid(256, 128, 128, 64)] == [0, 64, 128]  # 2048x1024 px: 3x1 views
    assert len(overlap_grid(384, 384, 128, 64)) == 25  # 3072 px: 5x5 views
    assert [w.left for w in overlap_grid(16, 100, 64, 32)] == [0, 32, 36]  # the last one shifted back
    assert overlap_grid(10, 12, 64, 32) == [Window(0, 0, 10, 12)]  # a window larger than the latent: clipped


@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("tile", [8, 16, 20, 64])
def test_offset_grid_tiles_and_the_uncovered_strip(height: int, width: int, tile: int) -> None:
    count = math.ceil(height / tile) * math.ceil(width / tile)
    for offset in [(0, 0), (tile // 2, 0), (0, tile - 1), (3 % tile, 5 % tile)]:
        windows = offset_grid(height, width, tile, offset)
        assert len(windows) == count
        covered = blend_sum(windows, height, width, "uniform") > 0
        rows = torch.arange(height)[:, None] >= min(offset[0], max(height - min(tile, height), 0))
        cols = torch.arange(width)[None, :] >= min(offset[1], max(width - min(tile, width), 0))
        assert torch.equal(covered, rows & cols), f"only the top/left strip is uncovered ({offset})"


def test_fstd_offsets_are_seeded_and_reset() -> None:
    offsets = fstd_offsets(seed=7, steps=20, offset_range=16, period=4)
    assert offsets == fstd_offsets(seed=7, steps=20, offset_range=16, period=4)
    assert offsets != fstd_offsets(seed=8, steps=20, offset_range=16, period=4)
    assert all(offsets[step] == (0, 0) for step in (0, 4, 8, 12, 16))
    assert all(0 <= o < 16 for pair in offsets for o in pair) and any(pair != (0, 0) for pair in offsets)
    every_other = fstd_offsets(seed=7, steps=20, offset_range=16, period=2)
    assert [every_other[s] for s in (1, 3, 5)] == [offsets[s] for s in (1, 3, 5)]  # P changes only the resets
    assert set(fstd_offsets(seed=7, steps=6, offset_range=16, period=1)) == {(0, 0)}


def test_jitter_is_border_aware() -> None:
    rng = random.Random(0)
    height, width, amount = 96, 160, 8
    windows = overlap_grid(height, width, 64, 32)
    for _ in range(50):
        moved = jitter(windows, height, width, amount, rng)
        for before, after in zip(windows, moved):
            dy, dx = after.top - before.top - amount, after.left - before.left - amount
            assert -amount <= dy <= amount and -amount <= dx <= amount
            assert 0 <= after.top and after.top + after.height <= height + 2 * amount
            assert 0 <= after.left and after.left + after.width <= width + 2 * amount
            if before.left == 0:
                assert dx <= 0
            if before.left + before.width == width:
                assert dx >= 0
    whole = jitter([Window(0, 0, 96, 64)], 96, 64, amount, rng)
    assert whole == [Window(amount, amount, 96, 64)]  # spans both axes: not moved


def test_gaussian_weights_match_mixture_of_diffusers() -> None:
    """x across the columns centred at (W-1)/2, y down the rows centred at H/2, variance 0.01 (official)."""
    height, width, var = 6, 9, 0.01
    expected = torch.tensor([[math.exp(-(x - (width - 1) / 2) ** 2 / (width * width) / (2 * var)) / math.sqrt(2 * math.pi * var)
                              * math.exp(-(y - height / 2) ** 2 / (height * height) / (2 * var)) / math.sqrt(2 * math.pi * var)
                              for x in range(width)] for y in range(height)], dtype=torch.float64)
    assert torch.allclose(gaussian_weights(height, width), expected, rtol=1e-12)


def test_sdxl_crop_embedding_is_sgm_timestep_embedding() -> None:
    from ldm.modules.diffusionmodules.util import timestep_embedding

    values = torch.tensor([512.0, 1024.0])
    reference = timestep_embedding(values, 256).reshape(-1)
    assert torch.allclose(embed_numbers([512, 1024]), reference, atol=1e-6)
    vector = torch.randn(2, 2816)
    cropped = with_crop(vector, 128, 256)
    assert torch.equal(cropped[:, :CROP_SLICE.start], vector[:, :CROP_SLICE.start])
    assert torch.equal(cropped[:, CROP_SLICE.stop:], vector[:, CROP_SLICE.stop:])
    assert torch.allclose(cropped[0, CROP_SLICE], timestep_embedding(torch.tensor([128.0, 256.0]), 256).reshape(-1),
                          atol=1e-6)


def test_window_cond_crops_spatial_conditioning_and_sets_crop_coordinates() -> None:
    rows, latent = 2, (16, 24)
    windows = [Window(0, 0, 8, 8), Window(8, 16, 8, 8)]
    image_cond = torch.arange(rows * 3 * 16 * 24, dtype=torch.float32).reshape(rows, 3, 16, 24)
    repeated = {"crossattn": torch.randn(rows, 5, 4).repeat(2, 1, 1), "vector": torch.randn(rows, 2816).repeat(2, 1),
                "c_concat": [image_cond.repeat(2, 1, 1, 1)], "dummy": [torch.zeros(rows * 2, 5, 1, 1)]}
    out = window_cond(repeated, windows, rows, latent)
    assert torch.equal(out["crossattn"], repeated["crossattn"])
    assert torch.equal(out["c_concat"][0][:rows], image_cond[:, :, 0:8, 0:8])
    assert torch.equal(out["c_concat"][0][rows:], image_cond[:, :, 8:16, 16:24])
    assert out["dummy"][0].shape == (rows * 2, 5, 1, 1)  # not spatial: kept
    assert torch.allclose(out["vector"][rows:, CROP_SLICE], embed_numbers([64, 128]).expand(rows, -1))
    assert torch.allclose(out["vector"][:rows, CROP_SLICE], embed_numbers([0, 0]).expand(rows, -1))
