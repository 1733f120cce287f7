"""FreeScale's pure parts: the fusion identities, the low-pass G, the token windows, memory-bounded global
attention, stage sizes and schedule indices, presets, the restrained-dilation layers and the region mask."""
from __future__ import annotations

import base64
import io
import random

import pytest
import torch
import torch.nn.functional as F

from lib_hires.methods.freescale import Detail, decode_mask, dilated_blocks, resolve, schedule_index, stage_sizes
from lib_hires.ops.scale_fusion import (
    ScaleFusion,
    blur_kernel_size,
    fuse,
    gaussian_lowpass,
    global_attention,
    local_attention,
    scale_numbers,
    token_grid,
    token_windows,
)
from lib_hires.params import GROUPS, FreeScaleParams, ParamError, validate_api_dict
from lib_hires.unet import map_unet
from tests.host.host import Models


def official_blur(x: torch.Tensor, size: int, sigma: float = 1.0) -> torch.Tensor:
    """The official HEAD's 3-D Gaussian (methods/freescale.md §4.4): one conv3d per batch element over
    (h, w, C) with the outer-product kernel."""
    taps = torch.arange(size, dtype=torch.float32)
    g = torch.exp(-(taps - (size - 1) / 2) ** 2 / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None, None] * g[None, :, None] * g[None, None, :])[None, None].repeat(x.shape[0], 1, 1, 1, 1)
    return F.conv3d(x.unsqueeze(0), kernel, padding=size // 2, groups=x.shape[0])[0]


def plain_attention(q: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
    ctx = q if ctx is None else ctx
    return torch.softmax(q @ ctx.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ ctx


@pytest.mark.parametrize("size", [3, 7])
def test_lowpass_equals_the_official_3d_kernel(size: int) -> None:
    x = torch.randn(2, 12, 10, 16)
    assert torch.allclose(gaussian_lowpass(x, size), official_blur(x, size), atol=1e-6)


def test_spatial_lowpass_blurs_each_channel_over_space_only() -> None:
    x = torch.randn(2, 12, 10, 5)
    taps = torch.exp(-(torch.arange(3.0) - 1) ** 2 / 2)
    g = taps / taps.sum()
    kernel = (g[:, None] * g[None, :])[None, None].repeat(10, 1, 1, 1)
    expected = F.conv2d(x.permute(0, 3, 1, 2).reshape(1, 10, 12, 10), kernel, padding=1, groups=10)
    assert torch.allclose(gaussian_lowpass(x, 3, channels=False), expected.reshape(2, 5, 12, 10).permute(0, 2, 3, 1),
                          atol=1e-6)


def test_fusion_identities() -> None:
    local, glob = torch.randn(2, 8, 8, 4), torch.randn(2, 8, 8, 4)
    official = official_blur(local, 3) + glob - official_blur(glob, 3)
    assert torch.allclose(fuse(local, glob, 3), official, atol=1e-6)
    assert torch.allclose(fuse(local, glob, 1), local, atol=1e-6)  # G = identity: the local result
    assert torch.equal(fuse(glob, glob, 3), glob)  # identical branches: the global result
    assert not torch.allclose(fuse(local, glob, 3, channels=False), fuse(local, glob, 3), atol=1e-3)


@pytest.mark.parametrize(("grid", "latent", "scale", "native", "expected"), [
    ((128, 128), (256, 256), (2, 2), 128, ((64, 64), (32, 32), (8, 8))),  # SDXL 2048², down_blocks.1
    ((64, 64), (256, 256), (2, 2), 128, ((32, 32), (16, 16), (4, 4))),  # SDXL 2048², down_blocks.2
    ((256, 256), (512, 512), (4, 4), 128, ((64, 64), (32, 32), (8, 8))),  # SDXL 4096²
    ((128, 128), (128, 128), (2, 2), 64, ((64, 64), (32, 32), (8, 8))),  # SD1.5 1024², level 0
    ((64, 128), (256, 512), (2, 4), 128, ((16, 32), (8, 16), (2, 4))),  # SDXL 2048x4096: official sub 64x128
])
def test_token_windows_match_the_official_geometry(grid, latent, scale, native, expected) -> None:
    windows = token_windows(grid, latent, scale, native)
    assert (windows.size, windows.stride, windows.jitter) == expected


@pytest.mark.parametrize(("scale", "count"), [(2, 3), (3, 5), (4, 7)])
def test_windows_per_axis_are_two_s_minus_one_and_cover_the_grid(scale: int, count: int) -> None:
    grid = (32 * scale, 32 * scale)
    windows = token_windows(grid, (64 * scale, 64 * scale), (scale, scale), 64)
    for seed in range(10):
        drawn = windows.draw(random.Random(seed))
        assert len(drawn) == count * count
        covered = torch.zeros(grid[0] + 2 * windows.jitter[0], grid[1] + 2 * windows.jitter[1], dtype=torch.bool)
        for win in drawn:
            assert win.top >= 0 and win.left >= 0 and win.top + win.height <= covered.shape[0] \
                and win.left + win.width <= covered.shape[1]
            covered[win.slices] = True
        assert covered[windows.jitter[0]:windows.jitter[0] + grid[0], windows.jitter[1]:windows.jitter[1] + grid[1]].all()


def test_token_grid_finds_the_level_of_odd_sizes() -> None:
    assert token_grid(40 * 24, (40, 24)) == (40, 24)
    assert token_grid(10 * 6, (40, 24)) == (10, 6)
    assert token_grid(5 * 3, (40, 24)) == (5, 3)
    assert token_grid(3 * 2, (40, 24)) is None  # a fourth downsampling is not a level of this UNet
    assert token_grid(13 * 7, (50, 26)) == (13, 7)  # ceil at every level


def test_local_attention_of_an_identity_is_the_input() -> None:
    x = torch.randn(2, 24 * 20, 8)
    windows = token_windows((24, 20), (24, 20), (2, 2), 16)
    out = local_attention(lambda q, ctx: q, x, windows, windows.draw(random.Random(0)))
    assert torch.allclose(out.reshape(2, -1, 8), x, atol=1e-6)


def test_local_attention_averages_window_outputs() -> None:
    """Each window attends among its own (zero-padded) tokens only: equal to attention per window by hand."""
    x = torch.randn(1, 16 * 16, 4)
    windows = token_windows((16, 16), (16, 16), (2, 2), 16)
    drawn = windows.draw(random.Random(3))
    out = local_attention(plain_attention, x, windows, drawn)
    (jh, jw) = windows.jitter
    padded = F.pad(x.reshape(1, 16, 16, 4), (0, 0, jw, jw, jh, jh))
    value, count = torch.zeros_like(padded), torch.zeros(padded.shape[1:3])
    for win in drawn:
        part = padded[:, win.slices[0], win.slices[1]].reshape(1, -1, 4)
        value[:, win.slices[0], win.slices[1]] += plain_attention(part, None).reshape(1, win.height, win.width, 4)
        count[win.slices] += 1
    expected = (value / count[None, :, :, None])[:, jh:jh + 16, jw:jw + 16]
    assert torch.allclose(out, expected, atol=1e-6)


def test_global_attention_in_query_blocks_equals_one_call() -> None:
    x = torch.randn(2, 100, 8)
    calls: list[tuple[int, int | None]] = []

    def attend(q: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        calls.append((q.shape[1], None if ctx is None else ctx.shape[1]))
        return plain_attention(q, ctx)

    whole = global_attention(attend, x, heads=4)
    assert calls == [(100, None)]
    calls.clear()
    blocked = global_attention(attend, x, heads=4, budget=2 * 4 * 100 * 30)  # 30 queries per block
    assert calls == [(30, 100)] * 3 + [(10, 100)]
    assert torch.allclose(blocked, whole, atol=1e-6)


def test_scale_fusion_passes_other_token_counts_through() -> None:
    fusion = ScaleFusion((32, 32), (2, 2), 16)
    assert fusion(plain_attention, torch.randn(1, 7, 4), 1, random.Random(0)) is None
    out = fusion(plain_attention, torch.randn(1, 16 * 16, 4), 1, random.Random(0))
    assert out is not None and out.shape == (1, 256, 4)


def test_scale_numbers_and_kernel() -> None:
    assert scale_numbers((2048, 2048), 1024) == (2, 2) and blur_kernel_size((2, 2)) == 3
    assert scale_numbers((4096, 2048), 1024) == (4, 2) and blur_kernel_size((4, 2)) == 7
    assert scale_numbers((768, 1536), 1024) == (1, 1)


@pytest.mark.parametrize(("target", "base", "count", "expected"), [
    ((1024, 1024), (512, 512), 0, [(512, 512), (1024, 1024)]),
    ((2048, 2048), (512, 512), 0, [(512, 512), (1024, 1024), (2048, 2048)]),
    ((4096, 4096), (1024, 1024), 0, [(1024, 1024), (2048, 2048), (4096, 4096)]),
    ((1536, 1536), (512, 512), 0, [(512, 512), (896, 896), (1536, 1536)]),  # 3x: round(log2 3) = 2 stages
    ((768, 768), (512, 512), 0, [(512, 512), (768, 768)]),
    ((2048, 2048), (512, 512), 1, [(512, 512), (2048, 2048)]),
    ((512, 512), (512, 512), 0, []),
])
def test_stage_sizes(target, base, count, expected) -> None:
    assert stage_sizes(target, base, 64, count) == expected


def test_schedule_indices_are_the_official_ones() -> None:
    assert schedule_index(0.3, 50) == 15 and schedule_index(0.7, 50) == 35
    assert schedule_index(0.3, 20) == 6 and schedule_index(0.3, 10) == 3 and schedule_index(0.7, 10) == 7


def test_presets() -> None:
    settings = validate_api_dict(GROUPS, {"freescale_preset": "8k", "freescale_restart": 0.5})
    params = settings[FreeScaleParams]
    resolved = resolve(params, settings.given)
    assert (resolved.detail, resolved.restart, resolved.dilation_end) == (1.0, 0.5, 0.7)
    custom = FreeScaleParams(preset="custom", detail=3.0)
    assert resolve(custom, frozenset()).detail == 3.0
    assert resolve(FreeScaleParams(detail=3.0), frozenset()).detail == 2.0  # the preset wins unless given


def test_restrained_dilation_layers(sd1: Models, sdxl: Models) -> None:
    """Spec §3: SDXL's official layers; SD1.x one level deeper (spec §7)."""
    sdxl_map, sd1_map = map_unet(sdxl.unet), map_unet(sd1.unet)
    assert set(sdxl_map.conv_values(dilated_blocks(sdxl_map, 2))) == {
        "input_blocks.6.0.op", "input_blocks.7.0.in_layers.2", "input_blocks.7.0.out_layers.3",
        "input_blocks.8.0.in_layers.2", "input_blocks.8.0.out_layers.3", "middle_block.0.in_layers.2",
        "middle_block.0.out_layers.3", "middle_block.2.in_layers.2", "middle_block.2.out_layers.3"}
    assert set(sd1_map.conv_values(dilated_blocks(sd1_map, 2))) == {
        "input_blocks.9.0.op", "input_blocks.10.0.in_layers.2", "input_blocks.10.0.out_layers.3",
        "input_blocks.11.0.in_layers.2", "input_blocks.11.0.out_layers.3", "middle_block.0.in_layers.2",
        "middle_block.0.out_layers.3", "middle_block.2.in_layers.2", "middle_block.2.out_layers.3"}


def png(pixels: list[list[int]]) -> str:
    from PIL import Image

    image = Image.new("L", (len(pixels[0]), len(pixels)))
    image.putdata([v for row in pixels for v in row])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_region_mask_is_binary_and_resized_nearest() -> None:
    text = png([[0, 0, 255, 1], [0, 0, 9, 200]])
    mask = decode_mask(text)
    assert mask.tolist() == [[[[0, 0, 1, 1], [0, 0, 1, 1]]]]
    exponent = Detail(3.0, 0.5, mask).exponent((4, 8))
    assert isinstance(exponent, torch.Tensor) and exponent.shape == (1, 1, 4, 8)
    assert exponent[0, 0, :, :4].eq(0.5).all() and exponent[0, 0, :, 4:].eq(3.0).all()
    assert Detail(2.0, 0.5).exponent((4, 8)) == 2.0


def test_region_mask_is_validated_naming_the_field() -> None:
    text = png([[0, 255]])
    settings = validate_api_dict(GROUPS, {"freescale_mask": "data:image/png;base64," + text})
    assert settings[FreeScaleParams].mask == text
    for bad, reason in (("not base64!", "not base64"), (base64.b64encode(b"hello").decode(), "not an image")):
        with pytest.raises(ParamError) as error:
            validate_api_dict(GROUPS, {"freescale_mask": bad})
        assert "freescale_mask" in error.value.problems and reason in error.value.problems["freescale_mask"]


def test_scale_number_one_is_the_local_result_without_the_global_call() -> None:
    """At (1, 1) the official G has one tap: fused = local. The global attention is not computed."""
    calls: list[int] = []

    def attend(q: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        calls.append(q.shape[0])
        return plain_attention(q, ctx)

    x = torch.randn(2, 24 * 24, 4)
    fusion = ScaleFusion((24, 24), (1, 1), 16)
    out = fusion(attend, x, 1, random.Random(0))
    windows = token_windows((24, 24), (24, 24), (1, 1), 16)
    expected = local_attention(plain_attention, x, windows, windows.draw(random.Random(0)))
    assert out is not None and torch.equal(out, expected.reshape(2, -1, 4)) and calls == [2 * 4]
    assert torch.allclose(fuse(expected, torch.randn(2, 24, 24, 4), 1), expected, atol=1e-6)


def test_plan_line_before_the_model_is_loaded_names_the_dilation() -> None:
    """Forge plans from the checkpoint before loading it (no UNet map): the line still shows the stages."""
    from lib_hires.job import PassSize, preview
    from lib_hires.unet import ModelFamily

    settings = validate_api_dict(GROUPS, {"enabled": True, "method": "freescale"})
    shown = preview(settings, None, 512, PassSize("first", 1024, 1024, 20), None, family=ModelFamily.SD1)
    assert any("1024x1024 from step 7 of 20 (dilation 2 on 8 steps, scale fusion on 3x3 windows)" in line
               for line in shown.lines)
