"""DemoFusion and AccDiffusion's pure parts: phases, windows, sub-lattices, blur, permutations, the
cosine schedule, the skip residual, word masks and patch prompts (methods/demofusion.md,
methods/accdiffusion.md)."""
from __future__ import annotations

import random

import pytest
import torch

from lib_hires.methods.demofusion import Fusion, phase_sizes
from lib_hires.ops.dilated_sampling import (
    blurred_input,
    element_permutations,
    gaussian_kernel,
    lattice_offsets,
    lattice_padding,
    permute,
    unpermute,
)
from lib_hires.ops.patch_prompts import opening_iterations, patch_tokens, window_coverage, word_masks
from lib_hires.ops.skip_residual import cosine_factor, restandardise, skip_residual
from lib_hires.ops.windows import Window, blend_sum
from lib_hires.sampling.guidance import guidance_rescaled
from lib_hires.sampling.hooks import ModelCall, Rows
from lib_hires.sampling.local_global import GlobalBranch, LocalGlobal
from lib_hires.sampling.steps import Step, sigma_to_timestep
from lib_hires.sampling.tiled import TiledEvaluation


def fusion(window: int = 64, stride: int = 32, **kw: object) -> Fusion:
    values: dict[str, object] = {"window": window, "stride": stride, "view_batch": 16, "local": "overlap",
                                 "residual_decay": 3.0, "global_decay": 1.0, "blur_decay": 1.0, "sigma": 0.8,
                                 "multiple": 8, "seed": 1}
    values.update(kw)
    return Fusion(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("target", "first", "native", "expected"), [
    ((3072, 3072), None, 1024, [(1024, 1024), (2048, 2048), (3072, 3072)]),
    ((4096, 2048), None, 1024, [(1024, 512), (2048, 1024), (3072, 1536), (4096, 2048)]),
    ((2560, 2560), None, 1024, [(1280, 1280), (2560, 2560)]),  # int(2.5) = 2 phases, the last at the target
    ((1024, 1024), None, 512, [(512, 512), (1024, 1024)]),
    ((1000, 1000), None, 512, []),  # less than twice the native side: no upscaling phase
    ((1024, 1024), (512, 512), 512, [(512, 512), (1024, 1024)]),
    ((2048, 2048), (512, 512), 512, [(512, 512), (1024, 1024), (1536, 1536), (2048, 2048)]),
    ((768, 768), (512, 512), 512, [(512, 512), (768, 768)]),  # hires: at least one phase
    ((512, 512), (512, 512), 512, []),
])
def test_phase_sizes(target: tuple[int, int], first: tuple[int, int] | None, native: int,
                     expected: list[tuple[int, int]]) -> None:
    assert phase_sizes(target, first, native, 64) == expected


def test_cosine_factor_matches_the_spec_values() -> None:
    assert cosine_factor(981) == pytest.approx(0.9991, abs=1e-4)
    assert cosine_factor(501) == pytest.approx(0.5016, abs=1e-4)
    assert cosine_factor(1) == pytest.approx(2.5e-6, rel=0.02)


def test_sigma_to_timestep_inverts_the_training_sigmas() -> None:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, dim=0)
    sigmas = ((1 - alphas) / alphas).sqrt()
    t = sigma_to_timestep(sigmas[[0, 1, 500, 999]], sigmas)
    assert torch.allclose(t, torch.tensor([0.0, 1.0, 500.0, 999.0]), atol=1e-3)


def test_skip_residual_and_restandardise() -> None:
    g = torch.Generator().manual_seed(0)
    z, clean, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    assert torch.equal(skip_residual(z, clean, noise, 3.0, 0.0), z)
    assert torch.allclose(skip_residual(z, clean, noise, 3.0, 1.0), clean + 3.0 * noise)
    like = torch.randn(2, 4, 8, 8, generator=g) * torch.tensor([2.0, 0.5])[:, None, None, None] + 1
    out = restandardise(z, like)
    for i in range(2):
        assert out[i].mean() == pytest.approx(float(like[i].mean()), abs=1e-5)
        assert out[i].std() == pytest.approx(float(like[i].std()), rel=1e-5)


@pytest.mark.parametrize(("size", "window", "stride"), [((48, 80), 32, 16), ((64, 64), 32, 8), ((40, 72), 32, 24)])
def test_jittered_windows_cover_every_latent_pixel(size: tuple[int, int], window: int, stride: int) -> None:
    f = fusion(window, stride)
    pad = f.jitter
    for seed in range(20):
        windows = f.windows(*size, random.Random(seed))
        total = blend_sum(windows, size[0] + 2 * pad, size[1] + 2 * pad, "uniform")
        assert (total[pad:pad + size[0], pad:pad + size[1]] > 0).all()
        for w in windows:  # inside the padded latent, at most J off the image
            assert 0 <= w.top and w.top + w.height <= size[0] + 2 * pad
            assert 0 <= w.left and w.left + w.width <= size[1] + 2 * pad


def test_local_average_has_total_weight_one() -> None:
    """With a model that returns its input, the windowed average returns the latent exactly."""
    f = fusion(16, 8)
    x = torch.randn(2, 4, 40, 56, generator=torch.Generator().manual_seed(1))
    pad = f.jitter
    local = TiledEvaluation(lambda step, padded: f.windows(padded[0] - 2 * pad, padded[1] - 2 * pad,
                                                           random.Random(step.index)), "uniform", 3)
    call = ModelCall(torch.nn.functional.pad(x, (pad,) * 4), torch.ones(2), None, Rows((0, 0), (False, True)),
                     Step(1, 4), lambda c, idx: c)
    out = local(call, lambda c: c.x)[..., pad:pad + 40, pad:pad + 56]
    assert torch.allclose(out, x, atol=1e-6)


@pytest.mark.parametrize(("size", "scale"), [((32, 32), 2), ((30, 45), 3), ((17, 64), 4)])
def test_sub_lattices_partition_the_padded_latent(size: tuple[int, int], scale: int) -> None:
    top, left = lattice_padding(*size, scale, multiple=4)
    h, w = size[0] + top, size[1] + left
    assert h % (4 * scale) == 0 and w % (4 * scale) == 0 and top < 4 * scale and left < 4 * scale
    count = torch.zeros(h, w)
    for a, b in lattice_offsets(scale):
        count[a::scale, b::scale] += 1
    assert torch.equal(count, torch.ones(h, w))
    assert len(lattice_offsets(scale)) == scale * scale


def test_blur_keeps_mean_and_std_and_the_kernel_is_normalised() -> None:
    assert float(gaussian_kernel(5, 0.8).sum()) == pytest.approx(1.0)
    x = torch.randn(3, 4, 24, 24, generator=torch.Generator().manual_seed(2)) * 3 + 1
    out = blurred_input(x, 3, 0.8)
    assert not torch.allclose(out, x)
    for i in range(3):
        assert out[i].mean() == pytest.approx(float(x[i].mean()), abs=1e-4)
        assert out[i].std() == pytest.approx(float(x[i].std()), rel=1e-4)


@pytest.mark.parametrize("per_position", [False, True])
def test_permutation_round_trip(per_position: bool) -> None:
    g = torch.Generator().manual_seed(3)
    order = element_permutations(5, (2, 4, 6, 7), g, per_position)
    assert order.shape == (5, 2, 4, 6, 7)
    assert torch.equal(order.sort(dim=0).values, torch.arange(5)[:, None, None, None, None].expand_as(order))
    if per_position:
        assert torch.equal(order, order[:, :, :1].expand_as(order))
    else:
        assert not torch.equal(order, order[:, :, :1].expand_as(order))
    x = torch.randn(5, 2, 4, 6, 7, generator=g)
    assert torch.equal(unpermute(permute(x, order), order), x)
    assert not torch.equal(permute(x, order), x)


def test_branches_return_the_latent_for_an_identity_model() -> None:
    """A model that returns its input: both branches give back the latent (the global branch corrects
    for the blur), so the mixed result is the latent, for any mix."""
    f = fusion(16, 8)
    x = torch.randn(2, 4, 40, 48, generator=torch.Generator().manual_seed(4))
    pad = f.jitter
    local = TiledEvaluation(lambda step, padded: f.windows(padded[0] - 2 * pad, padded[1] - 2 * pad,
                                                           random.Random(0)), "uniform", 4)
    for interaction in ("off", "element", "position"):
        hook = LocalGlobal(local, pad, GlobalBranch(3, 0.8, 1.0, 4, 1, interaction, seed=5), 1.0,
                           lambda sigma: torch.full_like(sigma, 600.0), stage=1)
        call = ModelCall(x, torch.ones(2), None, Rows((0, 0), (False, True)), Step(1, 4), lambda c, idx: c)
        assert torch.allclose(hook(call, lambda c: c.x), x, atol=1e-5)
        assert hook.lattice_evaluations == 9


def test_global_branch_equals_the_per_view_official_step() -> None:
    """With a position-dependent affine model, the global branch equals the official loop: the UNet on
    each blurred sub-lattice, its noise applied to the unblurred one."""
    x = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(6))
    bias = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(7))
    model = lambda c: 0.3 * c.x + bias
    branch = GlobalBranch(2, 0.8, 1.0, 4, 1)
    hook = LocalGlobal(TiledEvaluation(lambda s, l: [Window(0, 0, *l)], "uniform", 1), 0, branch, 0.0,
                       lambda sigma: torch.full_like(sigma, 999.0), stage=1)
    call = ModelCall(x, torch.ones(1), None, Rows((0,), (False,)), Step(0, 4), lambda c, idx: c)
    out = hook._global(call, model, 0.8)
    blurred = blurred_input(x, 2, 0.8)
    expected = torch.empty_like(x)
    for a, b in lattice_offsets(2):
        xb = blurred[:, :, a::2, b::2]
        eps = xb - (0.3 * xb + bias)  # sigma = 1
        expected[:, :, a::2, b::2] = x[:, :, a::2, b::2] - eps
    assert torch.allclose(out, expected, atol=1e-6)


def test_patch_cfg_rescales_the_guidance_direction() -> None:
    out = torch.tensor([[1.0], [3.0], [0.0], [2.0]])  # cond rows of images 0, 1, then their uncond rows
    rows = Rows((0, 1, 0, 1), (False, False, True, True))
    scaled = guidance_rescaled(out, rows, 0.5)
    assert torch.equal(scaled, torch.tensor([[0.5], [2.5], [0.0], [2.0]]))
    assert guidance_rescaled(out, rows, 1.0) is out


def test_word_masks_threshold_and_opening() -> None:
    maps = torch.zeros(2, 16, 16)
    maps[0, 2:10, 3:12] = 1.0  # a block: survives the opening unchanged
    maps[0, 14, 14] = 1.0  # an isolated pixel: removed
    maps[1, 0:5, 0:5] = 1.0  # a block at the border: the border does not erode it
    masks = word_masks(maps)
    assert opening_iterations(16) == 1 and opening_iterations(32) == 2
    expected = torch.zeros(2, 16, 16, dtype=torch.bool)
    expected[0, 2:10, 3:12] = True
    expected[1, 0:5, 0:5] = True
    assert torch.equal(masks, expected)


def test_window_coverage_and_patch_tokens_by_hand() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2, :] = True  # top half
    masks[1, :, :1] = True  # left quarter
    masks[2] = True  # everywhere
    windows = [Window(0, 0, 8, 8), Window(8, 8, 8, 8), Window(0, 8, 8, 8), Window(4, 0, 8, 8)]
    coverage = window_coverage(masks, (16, 16), 2, windows)  # mask pixel = 4 latent px; windows padded by 2
    # window (0, 0) in padded coords = latent rows/cols -2..5: top half rows 0..5 -> 6 rows x 6 cols inside
    assert coverage[0].tolist() == pytest.approx([36 / 64, 6 * 4 / 64, 36 / 64])
    assert coverage[1].tolist() == pytest.approx([2 * 8 / 64, 0.0, 1.0])  # latent rows 6..13: rows 6, 7 on
    assert coverage[2].tolist() == pytest.approx([6 * 8 / 64, 0.0, 48 / 64])
    assert coverage[3].tolist() == pytest.approx([6 * 6 / 64, 8 * 4 / 64, 48 / 64])
    assert patch_tokens(coverage, 0.3) == [(0, 1, 2), (2,), (0, 2), (0, 1, 2)]
    assert patch_tokens(coverage, 0.25) == [(0, 1, 2), (0, 2), (0, 2), (0, 1, 2)]  # a share equal to c counts
